"""The small-batch linear kernel in decoding, against the plain model: the same tokens and logits, and the
model is as it was after the block."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import ModelConfig
from rlhf_lib.models import small_rows_linear
from rlhf_lib.models.decoding import small_rows_linears
from rlhf_lib.models.loading import load_causal_lm

IDS = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(0))


def test_small_rows_linears_decode_like_the_plain_model_and_go_away(tiny_lm_dir, monkeypatch):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    calls, kernel = [], small_rows_linear.small_rows_linear

    def counted(*args):
        out = kernel(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(small_rows_linear, "small_rows_linear", counted)
    greedy = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        plain = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), **greedy)
        with small_rows_linears(model) as switched:
            fast = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), **greedy)
        after = model(input_ids=IDS).logits
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert switched == len(linears) > 0
    # 4 rows a step: the 5 decoding steps go through the kernel, and so does the prefill's LM head (it sees
    # the last position of each row); the prefill's layers multiply 36 rows and fall through.
    assert calls.count(True) == 5 * len(linears) + 1 and calls.count(False) == len(linears) - 1
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(fast.logits), torch.stack(plain.logits), rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(m) for m in linears)
    with torch.no_grad():
        assert torch.equal(after, model(input_ids=IDS).logits)


def test_small_rows_linears_fall_through_with_grad(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir))
    with small_rows_linears(model) as switched:
        logits = model(input_ids=IDS[:, :1]).logits
    assert switched
    logits.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None


def test_small_rows_linears_leave_hooked_or_subclassed_linears_alone_and_survive_errors(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    head = model.get_output_embeddings()
    own_forward = head.forward  # an instance-level forward, as accelerate's hooks install
    head.forward = own_forward

    class ScaledLinear(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = model.model.layers[0]
    layer.mlp.down_proj.__class__ = ScaledLinear
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with pytest.raises(KeyError), small_rows_linears(model) as switched:
        assert switched == len(linears) - 2
        assert vars(head)["forward"] is own_forward and "forward" not in vars(layer.mlp.down_proj)
        raise KeyError("an error inside the block")
    assert vars(head)["forward"] is own_forward
    assert not any("forward" in vars(m) for m in linears if m is not head)
