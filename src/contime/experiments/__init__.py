"""Experiments of the LMU and Rough Transformer papers, one module each, run by ``contime run NAME``."""

from .rundir import create_run_dir, result_record, write_config, write_json_atomic, write_metrics

__all__ = ["create_run_dir", "result_record", "write_config", "write_json_atomic", "write_metrics"]
