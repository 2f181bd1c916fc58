"""Subspace attacks: remove or fill the designated model's low-sensitivity subspace, or an estimate of it.

Attacks: ``blind`` (blind_subspace, blind_fill), ``highfreq`` (highfreq_projection), ``tile_average``,
``surrogate`` (surrogate_projection), ``oracle`` (oracle_projection, oracle_fill). Their machinery: ``view`` (images
as blocks), ``prior`` (public-image statistics), ``fill`` (projection and Gaussian fill of a subspace), ``estimate``
(the noise subspace from NTE statistics), ``model`` (a known layer's or model's own subspace).
"""
