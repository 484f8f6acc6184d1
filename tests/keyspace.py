"""The key builder of the style the tests run with: the cluster style under
``--redis-cluster`` (conftest sets ``CAL_REDIS_TEST_CLUSTER=1``), else standalone."""

from __future__ import annotations

import os

from cal_redis import KeyBuilder

#: Key names as the caches under test write them.
K = KeyBuilder(cluster=os.environ.get("CAL_REDIS_TEST_CLUSTER") == "1")
