"""Helpers of the multi-process tests (test_distributed, test_multinode): worker hooks and what they recorded.

`worker_env` puts a sitecustomize.py on PYTHONPATH. It is active in torchrun's workers only (they get RANK and
LOCAL_RANK) and records, per rank, every file medtune writes into the run folder and, after training, the global
step, a hash of the trainable weights, the tokens that rank trained on and its working directory. With
MEDTUNE_TEST_COUNT_OPS set it also counts, per value of the global step, the collectives (DDP's included) and the
host reads of tensor values (`.item()`, `int(t)`, `bool(t)`) with the code that issued them."""

import json
import os
from pathlib import Path

HOOKS = r'''
import hashlib, importlib, json, os
from pathlib import Path

if "RANK" in os.environ and "LOCAL_RANK" in os.environ and os.environ.get("MEDTUNE_TEST_RECORD"):
    import transformers
    train = importlib.import_module("medtune.training.train")  # the recipe module (it imports the writers by name)

    RANK = os.environ["RANK"]
    LOG = Path(os.environ["MEDTUNE_TEST_RECORD"]) / f"rank{RANK}.jsonl"

    def record(**kw):
        with open(LOG, "a") as f:
            f.write(json.dumps({"rank": int(RANK), **kw}) + "\n")

    def recording(name, fn, path_arg=0):
        def wrapper(*args, **kwargs):
            record(event="write", via=name, path=str(args[path_arg]))
            return fn(*args, **kwargs)
        return wrapper

    for name in ("atomic_write_text", "atomic_write_json", "atomic_write_jsonl", "staging_dir"):
        setattr(train, name, recording(name, getattr(train, name)))
    train.plot_losses = recording("plot_losses", train.plot_losses, path_arg=1)
    _publish = train.publish_dir

    def publish_dir(stage, dest):
        for f in sorted(Path(stage).rglob("*")):
            if f.is_file():
                record(event="write", via="publish_dir", path=str(Path(dest) / f.relative_to(stage)))
        return _publish(stage, dest)

    train.publish_dir = publish_dir
    _train = transformers.Trainer.train

    def trainer_train(self, *args, **kwargs):
        counter = Ops(self) if os.environ.get("MEDTUNE_TEST_COUNT_OPS") else None
        if counter is not None:
            with counter:
                result = _train(self, *args, **kwargs)
            record(event="ops", per_step={str(k): dict(v) for k, v in counter.seen.items()})
        else:
            result = _train(self, *args, **kwargs)
        h = hashlib.sha256()
        for name, p in sorted(self.model.named_parameters()):
            if p.requires_grad:
                h.update(name.encode() + p.detach().float().cpu().numpy().tobytes())
        record(event="trained", step=self.state.global_step, weights=h.hexdigest(),
               tokens=getattr(self, "tokens_seen", None), world=self.args.world_size, cwd=os.getcwd())
        return result

    transformers.Trainer.train = trainer_train

    if os.environ.get("MEDTUNE_TEST_COUNT_OPS"):
        import collections, traceback
        from torch.utils._python_dispatch import TorchDispatchMode

        COLLECTIVES = {"allreduce_", "allgather_", "broadcast_", "barrier", "allgather_into_tensor_coalesced",
                       "_allgather_base_", "reduce_scatter_", "_reduce_scatter_base_", "allreduce_coalesced_"}
        HOST_READS = {"_local_scalar_dense", "is_nonzero"}
        LIBS = ("/medtune/", "/transformers/", "/accelerate/", "/peft/")

        def caller():
            """'where < by': the innermost frame of medtune or a library it uses (medtune's collective helpers
            skipped), and the innermost frame of medtune or of the Trainer itself."""
            frames = traceback.extract_stack()[:-3]
            short = lambda f: f"{f.filename.split('/site-packages/')[-1].split('/src/')[-1]}:{f.name}"
            lib = [f for f in frames if any(x in f.filename for x in LIBS) and "distributed.py" not in f.filename]
            own = [f for f in frames if "/medtune/" in f.filename and "distributed.py" not in f.filename
                   or f.filename.endswith("transformers/trainer.py")]
            return f"{short(lib[-1]) if lib else '?'} < {short(own[-1]) if own else '?'}"

        class Ops(TorchDispatchMode):
            def __init__(self, trainer):
                super().__init__()
                self.trainer, self.seen = trainer, collections.defaultdict(collections.Counter)

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.__name__.split(".")[0]
                if name in COLLECTIVES or name in HOST_READS:
                    kind = "collective" if name in COLLECTIVES else "host_read"
                    self.seen[self.trainer.state.global_step][f"{kind} {name} {caller()}"] += 1
                return func(*args, **(kwargs or {}))

    if os.environ.get("MEDTUNE_TEST_SIGNAL"):  # RANK:STEP:NAME: that rank sends itself the signal as that step begins
        import signal
        sig_rank, sig_step, sig_name = os.environ["MEDTUNE_TEST_SIGNAL"].split(":")
        _step = transformers.Trainer.training_step

        def training_step(self, *args, **kwargs):
            if RANK == sig_rank and self.state.global_step + 1 == int(sig_step) and not hasattr(self, "_signalled"):
                self._signalled = True
                os.kill(os.getpid(), getattr(signal, sig_name))
            return _step(self, *args, **kwargs)

        transformers.Trainer.training_step = training_step
'''


def worker_env(tmp: Path, extra: dict | None = None) -> tuple[dict, Path]:
    """The environment of a launch (CPU and gloo even where a GPU exists; the hooks on PYTHONPATH) and the new
    folder where its workers record."""
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    rec = tmp / f"records-{len(list(tmp.glob('records-*')))}"
    rec.mkdir()
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), *paths]),  # absolute: workers may run elsewhere
        "MEDTUNE_TEST_RECORD": str(rec),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        **(extra or {}),
    }
    return env, rec


def read_records(rec: Path, nproc: int) -> dict[int, list[dict]]:
    """What each rank recorded, by rank."""
    return {
        r: [json.loads(line) for line in (rec / f"rank{r}.jsonl").read_text().splitlines()]
        if (rec / f"rank{r}.jsonl").exists()
        else []
        for r in range(nproc)
    }


def written(records: list[dict], out: Path) -> list[str]:
    """The files a rank wrote through medtune's writers, relative to `out`."""
    return [os.path.relpath(r["path"], out) for r in records if r["event"] == "write" and r["via"] != "staging_dir"]


def trained(records: list[dict]) -> dict:
    (t,) = [r for r in records if r["event"] == "trained"]
    return t


def check_clean(out: Path) -> None:
    """No staging folders or temporary files left: every file is complete."""
    assert not list(out.rglob(".staging-*")) and not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp.png"))
