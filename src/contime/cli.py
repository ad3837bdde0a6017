"""The ``contime`` command line.

    contime version
    contime run delay [--quick] [--order N] [--t-values 100,1000] [--n-test N] [--seed N] [--out-dir runs]

``run`` holds one command per experiment; each writes to ``<out-dir>/<experiment>/<timestamp>/``.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from . import __version__

app = typer.Typer(name="contime", help="Continuous-time sequence memory: LMU and Rough Transformer experiments.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
run_app = typer.Typer(help="Run an experiment; results go to OUT_DIR/<experiment>/<timestamp>/.",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")

console = Console()


def _parse_ints(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list of integers, got {text!r}", param_hint=name)
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"expected integers >= 1, got {text!r}", param_hint=name)
    return values


@app.command()
def version() -> None:
    """Print the contime version."""
    console.print(f"contime {__version__}")


@run_app.command("delay")
def run_delay_command(
    quick: bool = typer.Option(False, "--quick", help="T = 100 and 1,000 only; runs in seconds."),
    order: int = typer.Option(100, "--order", min=1, help="Legendre order of the memory."),
    t_values: Optional[str] = typer.Option(
        None, "--t-values", help="Comma-separated steps per window; default 100,1000,10000,100000 (with --quick: 100,1000)."),
    n_test: int = typer.Option(10, "--n-test", min=10, help="Test sequences per T."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base random seed."),
    batch_size: int = typer.Option(0, "--batch-size", min=0,
                                   help="Sequences per forward call; 0 fits a ~6 GiB memory budget."),
    out_dir: str = typer.Option("runs", "--out-dir", help="Base folder for run outputs."),
) -> None:
    """Delay capacity of the untrained LMU memory (LMU-0) on 10 Hz white noise, T = 100 .. 100,000."""
    from .experiments.delay import DelayConfig, run_delay

    try:
        config = DelayConfig.preset(quick, order=order, t_values=_parse_ints(t_values, "--t-values"),
                                    n_test=n_test, seed=seed, batch_size=batch_size)
    except ValueError as err:
        raise typer.BadParameter(str(err))
    run_delay(config, out_dir, console)


if __name__ == "__main__":  # pragma: no cover
    app()
