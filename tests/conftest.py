from __future__ import annotations

import os

from hypothesis import settings

# CI must not flake: derandomized examples there, fresh ones on developers'
# machines. PERCH_FUZZ_EXAMPLES=5000 fuzzes harder.
_examples = int(os.environ.get("PERCH_FUZZ_EXAMPLES", "100"))
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, max_examples=_examples)
settings.register_profile("dev", deadline=None, print_blob=True, max_examples=_examples)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
