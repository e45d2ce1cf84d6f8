"""PDU and GRU under DDP (2 gloo processes, a random tiny Llama).

* PDU: the dual variable is updated from the all-reduced retain loss, so it is identical on every rank and
  follows projected dual ascent on the global-batch retain loss.
* GRU: the retain gradient is all-reduced, so both ranks apply the same rectified gradient (identical weights),
  and that gradient does not point against the retain descent direction."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import free_port, spawn_and_wait
from test_distributed import make_tiny_model

STEPS, STEP_SIZE = 4, 3.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, builtin_tokenizer_path) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("pdu_dist") / "tiny", builtin_tokenizer_path)


def _worker(rank: int, world_size: int, port: int, model: str, out: str, objective: str) -> None:
    import lightning as L

    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import GRU, PDU

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    records: list[dict] = []

    class Recording(PDU):
        def retain_term(self, batch):
            value = super().retain_term(batch)
            records.append({"share": value.item(), "dual": float(self.dual)})
            return value

    class RecordingGRU(GRU):
        def on_before_optimizer_step(self, optimizer):
            retain = [g.clone() for g in self.rectifier.pending]
            super().on_before_optimizer_step(optimizer)
            grads = [p.grad for p in self.trainable_parameters()]
            records.append({"retain_sum": sum(float(r.double().sum()) for r in retain),
                            "dot": sum(float((g.double() * r.double()).sum()) for g, r in zip(grads, retain)),
                            "norm": sum(float(g.double().pow(2).sum()) for g in grads) ** 0.5
                            * sum(float(r.double().pow(2).sum()) for r in retain) ** 0.5})

    L.seed_everything(0, verbose=False)
    if objective == "PDU":
        module = Recording(model, tokenizer=model, lr=1e-3, dual_step_size=STEP_SIZE)
    else:
        module = RecordingGRU(model, tokenizer=model, lr=1e-2)
    data = UnlearningDataModule(tokenizer=model, forget_split="forget10", retain_split="retain90", max_length=64,
                                batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=world_size, strategy="ddp", max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    result = {"records": records}
    if objective == "PDU":
        result.update(final=float(module.dual), threshold=float(module.threshold))
    else:
        result["weights"] = sum(float(p.double().sum()) for p in module.model.parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_pdu_dual_is_identical_on_every_rank(tiny_model, tmp_path):
    spawn_and_wait(_worker, (2, free_port(), tiny_model, str(tmp_path), "PDU"), nprocs=2, timeout=300,
                   what="the 2-process PDU run")
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shares = [[rec["share"] for rec in run["records"]] for run in runs]
    assert shares[0] != pytest.approx(shares[1])  # the ranks saw different retain batches
    # the global-batch retain loss is the mean of the ranks' shares (see UnlearningModule.global_token_scale)
    global_retain = [(a + b) / 2 for a, b in zip(*shares)]
    assert runs[0]["threshold"] == runs[1]["threshold"] == pytest.approx(global_retain[0])
    expected = [1.0]
    for value in global_retain:
        expected.append(max(0.0, expected[-1] + STEP_SIZE * (value - global_retain[0])))
    for run in runs:
        assert [rec["dual"] for rec in run["records"]] == pytest.approx(expected[:STEPS], rel=1e-6)
        assert run["final"] == pytest.approx(expected[STEPS], rel=1e-6)
    assert runs[0]["final"] == runs[1]["final"]  # bit-identical on both ranks
    assert runs[0]["final"] != 1.0


def test_gru_applies_the_same_rectified_gradient_on_every_rank(tiny_model, tmp_path):
    spawn_and_wait(_worker, (2, free_port(), tiny_model, str(tmp_path), "GRU"), nprocs=2, timeout=300,
                   what="the 2-process GRU run")
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(runs[0]["records"]) == STEPS
    for a, b in zip(runs[0]["records"], runs[1]["records"]):
        assert a == b  # the all-reduced retain gradient and the rectified gradient are the same on both ranks
        assert a["dot"] >= -1e-6 * a["norm"]
    assert runs[0]["weights"] == runs[1]["weights"]
