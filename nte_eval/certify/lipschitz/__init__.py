"""Upper bounds and estimates of the Lipschitz constant of g, the network after its first linear operator.

A designated model is f = g ∘ A, with A the module at ``handle.first.path`` (its output includes its bias) and g the
map from A's output tensor (flattened, l2) to the logits (l2). Three sources, each a ``LipschitzBound``:

- ``product_bound`` (``product``): the module traced with torch.fx (``graph``: the first layer and timm's untraceable
  modules kept whole) and walked from A's node: L(node) = Σ_i c_i · L(input_i), c_i the op's Lipschitz constant
  w.r.t. input i (``rules``, ``norms``, ``activations``). Exact spectral norms of Linear layers and of small
  zero-padded convolutions, an upper bound for large ones, eval-mode BatchNorm folded into the conv/linear before
  it, activation slopes (GELU: 1.1289, not 1), pooling by window coverage or exact norms. Certified when every op on
  the path has a rule; refused for attention, LayerNorm/GroupNorm, products of two input-dependent tensors and ops
  without a rule.
- ``lipsdp_bound`` (``lipsdp``): LipSDP-Neuron with cvxpy for g a chain of affine maps and slope-restricted
  activations, each certificate re-verified in float64; never above the product bound.
- ``local_estimate`` (``local``): the largest spectral norm of g's Jacobian at A(x) and at random points around it,
  by power iteration. An estimate, never certified.

Everything runs on one ``Float64Network`` (``network``), the float64 copy a certification makes once and shares with
its fidelity measurement; ``lipschitz_bounds`` (``sources``) computes the requested sources on it. The handle's
module is never modified.
"""

from nte_eval.certify.lipschitz.activations import GELU_SLOPES, activation_slopes
from nte_eval.certify.lipschitz.lipsdp import lipsdp_bound
from nte_eval.certify.lipschitz.local import local_estimate
from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.norms import conv_operator_norm
from nte_eval.certify.lipschitz.product import product_bound
from nte_eval.certify.lipschitz.result import LipschitzBound
from nte_eval.certify.lipschitz.sources import SOURCES, lipschitz_bounds

__all__ = ["GELU_SLOPES", "SOURCES", "Float64Network", "LipschitzBound", "activation_slopes", "conv_operator_norm",
           "lipschitz_bounds", "lipsdp_bound", "local_estimate", "product_bound"]
