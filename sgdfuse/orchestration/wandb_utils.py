"""W&B helpers shared by train.py and evaluate.py."""

from __future__ import annotations

import functools
import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@functools.cache
def wandb_offline() -> bool:
    """True (and said once) when no W&B API key is configured and ``WANDB_MODE`` does not decide."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    try:
        has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    if not has_key:
        log.warning("W&B: no API key configured (WANDB_API_KEY or `wandb login`): logging OFFLINE; "
                    "upload later with `wandb sync <folder>/wandb/offline-run-*`.")
    return not has_key


def log_evaluation(settings: dict[str, Any], config: dict[str, Any], results: dict[str, dict[str, Any]],
                   output_dir: str | os.PathLike) -> None:
    """One W&B run (inside a sweep: the sweep's run): ``test/<set>/<METRIC>`` means and each set's grid."""
    import wandb

    from sgdfuse.orchestration.results import flat_metrics

    settings = dict(settings)
    settings.pop("enabled", None)
    mode = "offline" if wandb_offline() else "online"
    run = wandb.init(config=config, dir=str(output_dir), mode=mode, job_type="evaluate", **settings)
    run.log(flat_metrics(results))
    for name in results:
        grid = Path(output_dir) / name / "grid.png"
        if grid.is_file():
            run.log({f"test/{name}/grid": wandb.Image(str(grid), caption="IR | VIS | masks | outputs")})
    run.finish()
