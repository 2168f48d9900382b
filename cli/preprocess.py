"""``mtlkit preprocess ...``: convert datasets into the HDF5 layout of DESIGN.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, parse_size, user_errors

app = typer.Typer(help="Convert a dataset into mtlkit's HDF5 layout.", no_args_is_help=True)

_OVERWRITE_HELP = "replace --out if it exists (the old file stays until the new one is complete)"


def _check_out(out: Path, overwrite: bool) -> None:
    """An existing --out needs --overwrite; its folder must be writable. Before any work."""
    from mtlkit.errors import OutputError
    from mtlkit.utils import check_writable

    if out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a folder", "pass the path of an .h5 file")
    if out.exists() and not overwrite:
        raise OutputError(f"{str(out)!r} already exists",
                          "pass --overwrite to replace it, or choose another --out")
    check_writable(out, kind="file")


@app.command()
@user_errors
def synthetic(
    out: Annotated[Path, typer.Option(help="output .h5 file")] = Path("data/synthetic.h5"),
    train: Annotated[int, typer.Option(help="training images")] = 800,
    val: Annotated[int, typer.Option(help="validation images")] = 200,
    size: Annotated[str, typer.Option(help="image size HxW")] = "128x160",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
) -> None:
    """Render the built-in synthetic scenes (all six tasks) into an HDF5 file."""
    from mtlkit.data.synthetic import build_synthetic_h5
    from mtlkit.errors import ConfigError

    if train < 1 or val < 1:
        raise ConfigError("--train and --val must be at least 1")
    hw = parse_size(size)
    _check_out(out, overwrite)
    build_synthetic_h5(out, train=train, val=val, size=(hw[0], hw[1]), seed=seed, progress=True)
    console.print(f"wrote [bold]{out}[/] ({train} train / {val} val, {hw[0]}x{hw[1]})")


@app.command()
@user_errors
def nyud(
    out: Annotated[Path, typer.Option(help="output .h5 file")] = Path("data/nyud.h5"),
    mat: Annotated[Path | None, typer.Option(
        help="nyu_depth_v2_labeled.mat (MATLAB v7.3, 2.8 GB)")] = None,
    splits: Annotated[Path | None, typer.Option(
        help="splits.mat (trainNdxs -> train, testNdxs -> val)")] = None,
    mapping: Annotated[Path | None, typer.Option(
        help="classMapping40.mat (894 -> 40 classes)")] = None,
    from_folder: Annotated[Path | None, typer.Option(
        "--from-folder", help="import a prepared MTL-PT NYUD_MT/ or ATRC/InvPT NYUDv2/ folder "
        "instead of the raw files")] = None,
    crop: Annotated[str, typer.Option(
        help="none (480x640) | eigen (rows 45:471, cols 41:601); raw files only")] = "none",
    limit: Annotated[int | None, typer.Option(
        help="convert only the first N images of each split (a quick try)")] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
) -> None:
    """Convert NYUD-v2 (semseg 40, depth, normals, edge) into an HDF5 file."""
    from mtlkit.errors import ConfigError

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} is out of range", "it must be >= 1")

    if from_folder is not None:
        if mat or splits or mapping:
            raise ConfigError("--from-folder cannot be combined with --mat/--splits/--mapping",
                              "pass either the folder or the three raw files")
        if crop != "none":
            raise ConfigError("--crop applies to the raw .mat only",
                              "drop --crop when importing a folder")
        from mtlkit.data.folders import convert_nyud_folder

        _check_out(out, overwrite)
        s = convert_nyud_folder(from_folder, out, limit=limit, progress=True)
        what = f"{s['layout']} folder"
    else:
        missing = [n for n, v in (("--mat", mat), ("--splits", splits), ("--mapping", mapping))
                   if v is None]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}",
                              "pass --mat, --splits and --mapping (or --from-folder DIR)")
        from mtlkit.data.nyud import convert_nyud

        _check_out(out, overwrite)
        s = convert_nyud(mat, splits, mapping, out, crop=crop, limit=limit, progress=True)
        what = f"raw .mat, crop {crop}"
    h, w = s["size"]
    console.print(f"wrote [bold]{out}[/] ({s['splits']['train']} train / {s['splits']['val']} "
                  f"val, {h}x{w}, from {what})")


@app.command()
@user_errors
def pascal(
    root: Annotated[Path, typer.Option(help="the MTL-PT PASCAL_MT/ folder")],
    out: Annotated[Path, typer.Option(help="output .h5 file")] = Path("data/pascal.h5"),
    pad: Annotated[int, typer.Option(
        help="images are stored top-left in a PAD x PAD canvas (hw keeps each size)")] = 512,
    limit: Annotated[int | None, typer.Option(
        help="convert only the first N images of each split (a quick try)")] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
) -> None:
    """Convert PASCAL-Context multi-task (semseg 21, parts 7, saliency, normals, edge)."""
    from mtlkit.data.pascal import convert_pascal
    from mtlkit.errors import ConfigError

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} is out of range", "it must be >= 1")
    if pad < 1:
        raise ConfigError(f"--pad {pad} is out of range", "it must be >= 1")
    _check_out(out, overwrite)
    s = convert_pascal(root, out, pad=pad, limit=limit, progress=True)
    note = f", {s['resized']} maps resized to their image" if s["resized"] else ""
    console.print(f"wrote [bold]{out}[/] ({s['splits']['train']} train / {s['splits']['val']} "
                  f"val, padded to {pad}x{pad}{note})")
