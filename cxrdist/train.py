"""torchrun entry point (used by slurm/train.sbatch): ``torchrun ... --module cxrdist.train run_dir=R method=...``.

Every rank composes the same overrides; rank 0 prepares the run dir (refusing one started with another
config) and broadcasts the resolved config, so every rank runs exactly what ``RUN/config.yaml`` says.
"""

from __future__ import annotations

import sys

from cxrdist import dist


def main(argv: list[str] | None = None) -> int:
    """Prepare on rank 0, then run the method's stages on every rank."""
    from cxrdist.config import compose, to_container
    from cxrdist.job import prepare_run, run_rank

    env = dist.from_environment()
    dist.init(env)
    cfg_dict, error = None, None
    if env.is_main:
        try:
            cfg = compose(list(sys.argv[1:] if argv is None else argv))
            prepare_run(cfg)
            cfg_dict = to_container(cfg)
        except Exception as e:  # reported on every rank, then all exit
            error = f"{type(e).__name__}: {e}"
    cfg_dict, error = dist.broadcast_object((cfg_dict, error))
    if error is not None:
        print(f"cxrdist.train: {error}", file=sys.stderr)
        dist.shutdown()
        return 2
    run_rank(cfg_dict, cfg_dict["run_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
