"""The ``mtlkit`` command: a typer app; every command is a thin wrapper over a library function."""

from __future__ import annotations

import typer

from cli import benchmark as _benchmark
from cli import compare as _compare
from cli import evaluate as _evaluate
from cli import listing as _listing
from cli import preprocess as _preprocess
from cli import train as _train

app = typer.Typer(
    name="mtlkit",
    help="Multi-task dense prediction: preprocess datasets, train paper architectures, "
    "evaluate with the field's metrics, profile CUDA kernels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(_preprocess.app, name="preprocess")
app.command("train")(_train.train)
app.command("evaluate")(_evaluate.evaluate)
app.command("predict")(_evaluate.predict)
app.command("list")(_listing.list_)
app.command("compare")(_compare.compare)
app.command("plot")(_compare.plot)
app.command("benchmark")(_benchmark.benchmark)

try:  # the profiling command lives with the ops layer
    from cli import profile as _profile

    if hasattr(_profile, "register"):
        _profile.register(app)
    else:
        app.command("profile")(_profile.profile)
except ImportError:  # pragma: no cover - during development only
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
