"""Configuration of the taskpool stack: Celery (celery.py), Flower (flower.py), Redis (redis.conf)."""
