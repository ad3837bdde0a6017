"""The training engine: loop, metrics, checkpoints, exact resume, DDP under torchrun.

    from contime.training import TrainConfig, Trainer

    config = TrainConfig(epochs=10, batch_size=100, lr=1e-3, optimizer="adam", schedule="cosine", warmup_steps=100,
                         clip_grad_norm=1.0, seed=0, checkpoint_every=200)
    trainer = Trainer(model, config, train=(x, y), val=(xv, yv), test=(xt, yt), loss="cross_entropy",
                      metric="accuracy", run_dir=run_dir / "LMU", name="LMU")
    result = trainer.fit()      # resumes an interrupted run; returns a finished run's stored result

See ``trainer`` for what ``fit`` does, ``checkpoint`` for the files, ``distributed`` for torchrun.
"""

from .batches import TensorData, epoch_order, step_seed
from .checkpoint import (Checkpoint, find_checkpoint, load_weights, read_checkpoint, save_weights,
                         write_checkpoint)
from .config import OPTIMIZERS, SCHEDULES, TrainConfig, learning_rate
from .distributed import DistInfo, init_distributed, resolve_device
from .evaluate import evaluate, predict
from .metrics import LOSSES, METRICS, Metric, accuracy, cross_entropy, mse, mse_loss, nrmse, rmse
from .plot import plot_history
from .progress import TrainProgress
from .trainer import Trainer, TrainState, count_parameters

__all__ = [
    "TrainConfig", "Trainer", "TrainState", "Metric", "evaluate", "predict", "plot_history", "count_parameters",
    "learning_rate", "OPTIMIZERS", "SCHEDULES", "LOSSES", "METRICS", "accuracy", "mse", "rmse", "nrmse",
    "cross_entropy", "mse_loss", "Checkpoint", "write_checkpoint", "read_checkpoint", "find_checkpoint",
    "save_weights", "load_weights", "TensorData", "epoch_order", "step_seed", "DistInfo", "init_distributed",
    "resolve_device", "TrainProgress",
]
