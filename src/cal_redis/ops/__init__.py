"""Domain operations, one module per domain, mixed into :class:`~cal_redis.CallableCache`."""
