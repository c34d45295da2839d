"""The typed signed slots: what the signer decided about running a bundle.

Layer: policy (pure data; imports only :mod:`edgeguard.errors`, :mod:`edgeguard._strict`,
:mod:`edgeguard.crypto` and :mod:`edgeguard.bundle`). Above the bundle format, below
everything that builds or runs a bundle: packaging writes these structures, the device
session reads them, and nothing else interprets a manifest slot.

* :mod:`~edgeguard.policy.sanity` - the calibrated input-sanity profile (``sanity`` slot);
* :mod:`~edgeguard.policy.runtime` - the runtime policy (``policy["runtime"]``);
* :mod:`~edgeguard.policy.isolation` - the isolation requirements (``policy["sandbox"]``);
* :mod:`~edgeguard.policy.io` - each member's I/O contract (``policy["io"]``);
* :mod:`~edgeguard.policy.engine` - the TensorRT engine recipe (``engine_recipe`` slot);
* :mod:`~edgeguard.policy.slots` - :func:`read_slots`, the one strict reader of them all,
  called when a bundle's signature has been verified.

Each structure is a frozen dataclass with ``to_dict()`` and a strict ``from_dict()``.
"""
