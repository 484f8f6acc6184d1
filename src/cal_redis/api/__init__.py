"""The API mixins of :class:`~cal_redis.CallableCache`, one per area; each is
stateless and declares what it needs of its host."""
