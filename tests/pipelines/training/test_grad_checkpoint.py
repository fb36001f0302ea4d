"""Per-block activation checkpointing (``--grad-checkpoint``): same loss and gradients,
blocks recomputed in the backward pass, switched on by the training loop."""
import pytest
import torch
import torch.nn.functional as F

from mambaseq.core import MambaLM, MambaLMConfig
from mambaseq.core.backbone import set_grad_checkpointing
from mambaseq.pipelines.training.config import TrainConfig
from mambaseq.pipelines.training.loop import train

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _loss_and_grads(lm, ids):
    lm.zero_grad()
    loss = F.cross_entropy(lm(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


def test_checkpointed_blocks_give_the_same_gradients_and_are_recomputed():
    lm = MambaLM(MambaLMConfig(vocab_size=11, d_model=16, n_layer=3))
    ids = torch.randint(0, 11, (2, 65))
    plain_loss, plain = _loss_and_grads(lm, ids)
    calls = []
    lm.backbone.layers[1].mixer.register_forward_pre_hook(lambda *_: calls.append(1))
    assert set_grad_checkpointing(lm) == 1 and lm.backbone.grad_checkpoint
    loss, grads = _loss_and_grads(lm, ids)
    assert len(calls) == 2                     # forward, then again in the backward pass
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain[name], rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():                      # inference is untouched (and state passes)
        logits, state = lm(ids, return_state=True)
        assert len(state.layers) == 3 and torch.isfinite(logits).all()


@pytest.mark.parametrize("rc_equivariant", [False, True])
def test_checkpointed_bidirectional_layers_give_the_same_gradients(rc_equivariant):
    from mambaseq.core import SequenceClassifier, SequenceClassifierConfig
    clf = SequenceClassifier(SequenceClassifierConfig(
        vocab_size=6, d_model=16, n_layer=2, num_classes=3, bidirectional=True,
        rc_equivariant=rc_equivariant, complement=[3, 2, 1, 0, 4, 5] if rc_equivariant else None))
    ids = torch.randint(0, 4, (2, 37))
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    labels = torch.tensor([0, 2])

    def loss_and_grads():
        clf.zero_grad()
        loss = F.cross_entropy(clf(ids, mask), labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in clf.named_parameters()}

    plain_loss, plain = loss_and_grads()
    calls = []
    clf.backbone.layers[1].mixer.fwd.register_forward_pre_hook(lambda *_: calls.append(1))
    assert set_grad_checkpointing(clf) == 1 and clf.backbone.grad_checkpoint
    loss, grads = loss_and_grads()
    assert len(calls) == (4 if rc_equivariant else 2)    # each use, again in the backward
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_loop_applies_grad_checkpoint_or_refuses(tmp_path):
    def get_batch(index, seq_len, batch_size, rank, world):
        g = torch.Generator().manual_seed(index)
        return torch.randint(0, 11, (batch_size, seq_len + 1), generator=g)

    def loss_fn(model, batch):
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), batch.numel()

    lm = MambaLM(MambaLMConfig(vocab_size=11, d_model=16, n_layer=2))
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=2, seq_len=16,
                      warmup_steps=1, device="cpu", grad_checkpoint=True)
    train(lm, loss_fn, get_batch, cfg)
    assert lm.backbone.grad_checkpoint
    with pytest.raises(ValueError, match="grad_checkpoint: a Linear has no backbone"):
        train(torch.nn.Linear(3, 3), loss_fn, get_batch,
              TrainConfig(out=str(tmp_path / "other"), steps=1, device="cpu",
                          grad_checkpoint=True))


def test_a_checkpointed_block_keeps_none_of_its_scan_inputs_alive():
    """Under torch.utils.checkpoint the scan's inputs must be freed after the forward (the
    Function kept them on ctx once, so checkpointing saved little memory)."""
    import gc
    import weakref

    from mambaseq.kernels.cpu_scan import selective_scan_cpu
    b, e, n, length = 1, 4, 3, 40
    x = torch.randn(b, e, length, requires_grad=True)
    delta, z = torch.rand(b, e, length), torch.randn(b, e, length)
    A, B, C = -torch.rand(e, n), torch.randn(b, n, length), torch.randn(b, n, length)
    alive = []

    def block(x):
        u = x * 2.0                                # only the scan reads this intermediate
        alive.append(weakref.ref(u))
        return selective_scan_cpu(u, delta, A, B, C, z=z, delta_softplus=True)

    y = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    gc.collect()
    assert alive[0]() is None
    y.sum().backward()                             # recomputed: the gradient is still right
    expected = torch.autograd.grad(block(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
