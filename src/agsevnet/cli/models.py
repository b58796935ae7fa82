"""``agsevnet models``: the models shipped with the package and their measured figures."""

from __future__ import annotations

import typer

from agsevnet.cli import app


@app.command("models")
def models_command() -> None:
    """List the bundled models (the first is what `agsevnet predict` uses without --model) with their
    cross-validated figures; MODEL_CARD.md has the details."""
    from agsevnet.infer.bundled import DEFAULT_MODEL, bundled_names, model_card

    names = bundled_names()
    if not names:
        typer.echo("no bundled models in this installation")
        raise typer.Exit(1)
    for name in sorted(names, key=lambda n: (n != DEFAULT_MODEL, n)):
        card = model_card(name)
        cv = card.get("crossval") or {}
        mark = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{mark}: {card.get('summary', '')}")
        typer.echo(f"  file {card['file']} ({card['bytes'] / 1e6:.1f} MB, {card['parameters'] / 1e6:.2f} M parameters)")
        if cv:
            typer.echo(f"  cross-validated on {cv.get('patients')} patients ({cv.get('folds')} folds): Dice ET "
                       f"{cv['Dice_ET']:.3f} WT {cv['Dice_WT']:.3f} TC {cv['Dice_TC']:.3f}; HD95 ET "
                       f"{cv['Hausdorff95_ET']:.1f} WT {cv['Hausdorff95_WT']:.1f} TC {cv['Hausdorff95_TC']:.1f} mm")
        if card.get("training"):
            typer.echo(f"  trained: {card['training']}")
        typer.echo("  research use only: not for clinical use")
