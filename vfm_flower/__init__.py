"""vfm-flower: vertical federated learning for marketing collaborations, on Flower.

The protocol core (PSI alignment, envelopes, masking, Paillier, agreement and audit, model
math, report) lives in this package and does not import Flower, except ``vfm_flower.runtime``
(the wire format and the in-process runner). The Flower adapters are ``strategies`` (server)
and ``clients`` (parties).
"""

__version__ = "0.1.0"
