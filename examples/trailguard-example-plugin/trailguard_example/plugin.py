"""The module form of this plugin, for ``plugins: [trailguard_example.plugin]`` in the config:
trailguard reads ``DETECTORS`` and ``SINKS`` (name → class) from it."""

from trailguard_example.digest_sink import DigestSink
from trailguard_example.secrets_read_spree import SecretsReadSpree

DETECTORS = {SecretsReadSpree.name: SecretsReadSpree}
SINKS = {"digest": DigestSink}
