"""`python -m medtune ...`, also the entry point for `torchrun -m medtune` and `accelerate launch -m medtune`."""

import sys

from medtune.cli import main

if __name__ == "__main__":  # not when a spawned worker process (serve) imports this module as __mp_main__
    rc = main()
    dist = sys.modules.get("torch.distributed")  # imported only if the command used torch
    # after a multi-process run, leave the process group cleanly (a failed rank just exits)
    if rc == 0 and dist is not None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(rc)
