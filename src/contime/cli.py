"""The ``contime`` command line.

    contime version
    contime bench              LMU paths against nn.LSTM and the bandwidth floor (``contime bench --help``)
    contime run delay          LMU-0's delay capacity, T = 100 .. 100,000 (the demo)
    contime run capacity       LMU-0 beside a trained LSTM and LMU
    contime run mackey-glass   chaotic time-series prediction: LSTM, LMU, hybrid
    contime run psmnist        permuted sequential (Fashion-)MNIST
    contime run theta          learning the time scale by backprop through the discretization
    contime run sinusoid       irregular sinusoids: Rough Transformer, Transformer, GRU, Neural CDE, LMUs
    contime run sinusoid-long  the long-range variant
    contime run uea            a UEA/UCR set bundled with aeon
    contime run rt-scaling     seconds per epoch against length: Rough Transformer vs Transformer
    contime run spiking        the LMU memory in m Poisson neurons: error and cost against m and d

``run`` holds one command per experiment (``contime run NAME --help`` for its options); each writes to
``<out-dir>/<experiment>/<timestamp>/``, and ``--quick`` runs a small version of the same code path.
"""

from __future__ import annotations



import typer
from rich.console import Console

from . import __version__

app = typer.Typer(name="contime", help="Continuous-time sequence memory: LMU and Rough Transformer experiments.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
run_app = typer.Typer(help="Run an experiment; results go to OUT_DIR/<experiment>/<timestamp>/.",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")

console = Console()


@app.command()
def version() -> None:
    """Print the contime version."""
    console.print(f"contime {__version__}")


# The benchmark lives in its own package (contime.bench), beside the experiments.
def _register_bench() -> None:
    from .bench.cli import bench

    app.command("bench")(bench)


_register_bench()


# One module per experiment in contime.experiments; each defines EXPERIMENT (its name) and ``command``,
# a typer command function. The list is explicit so that `contime run --help` shows them in this order.
# A module with several commands (one per task) lists them in COMMANDS instead.
EXPERIMENTS = ("delay", "capacity", "mackey_glass", "psmnist", "theta", "irregular", "scaling", "spiking")


def _register_experiments() -> None:
    import importlib

    for name in EXPERIMENTS:
        module = importlib.import_module(f"contime.experiments.{name}")
        for experiment, command in getattr(module, "COMMANDS", {module.EXPERIMENT: module.command}).items():
            run_app.command(experiment)(command)


_register_experiments()


if __name__ == "__main__":  # pragma: no cover
    app()
