"""`core eval` and the tools rebuild a run from its checkpoint with the losses' state too
(what an evaluator may read: a matching head, a memory); a state that does not fit the
pipeline's losses is one warning line and leaves them as built, nothing half-loaded."""

import logging

import torch

from core.runner import restore_run
from core.training.checkpoint import load_checkpoint


def centre_run(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["losses"] = [{"name": "ce"}, {"name": "center_loss", "weight": 0.01}, {"name": "center_loss", "weight": 0.01}]
    config["trainer"]["eval_before"] = False
    return run_tiny_pipeline(config)


def test_a_checkpoint_restores_the_losses_state(tiny_pipeline_config, run_tiny_pipeline):
    result = centre_run(tiny_pipeline_config, run_tiny_pipeline)
    saved = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["losses"]
    _, _, trainer = restore_run(result.run_dir)
    assert trainer.losses_restored is True
    state = trainer.net.losses.state_dict()
    assert set(state) == set(saved) and any(k.endswith("centers") for k in saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_a_state_that_does_not_fit_is_one_line_and_loads_nothing(tiny_pipeline_config, run_tiny_pipeline, caplog,
                                                                   tmp_path):
    result = centre_run(tiny_pipeline_config, run_tiny_pipeline)
    checkpoint = result.run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    first, second = sorted(k for k in state["losses"] if k.endswith("centers"))
    state["losses"][first] = torch.full_like(state["losses"][first], 7.0)  # fits, loaded first
    state["losses"][second] = torch.zeros(3, 3)  # does not fit
    odd = result.run_dir / "checkpoints" / "odd.pt"
    torch.save(state, odd)
    with caplog.at_level(logging.WARNING):
        _, _, trainer = restore_run(odd)
    assert trainer.losses_restored is False
    built = trainer.net.losses.state_dict()
    assert not torch.equal(built[first], state["losses"][first])  # the fitting part was not kept either
    said = [r.getMessage() for r in caplog.records if "losses' state does not fit" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "odd.pt" in said[0] and second in said[0], said
