"""Collection: one run from questions to finished shards (``run.collect``): prompts, plan,
shared prefix and hand-off, forward passes, read-out, shards on disk.

Named ``collection`` rather than ``collect`` so the wing never shadows the public function
``hf_introspect.collect`` (importing a subpackage sets it as an attribute of its parent)."""
