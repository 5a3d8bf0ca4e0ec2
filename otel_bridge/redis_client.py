"""A client for a Redis server or a Redis Cluster, whichever the URL leads to.

Managed Redis often runs in cluster mode (ElastiCache, Memorystore, Azure Cache): a plain client
talking to one of its nodes gets MOVED for every key that node does not hold. The server says which
it is (`INFO cluster`): for a cluster, redis-py's cluster client, which follows the slots to their
nodes and fails over with them. One round trip, once, when the bridge opens the connection.
"""

from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

# What a Redis client raises when Redis fails it: a cluster client that reaches no node at all raises an
# exception of its own that is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def connect(url: str, **options: Any) -> "redis.Redis | RedisCluster":
    """A client of the Redis at `url`: a cluster client when that server is a node of a cluster.

    Raises what redis-py raises when the server cannot be reached."""
    plain = redis.Redis.from_url(url, **options)
    try:
        cluster = bool(plain.info("cluster").get("cluster_enabled"))
    except redis.exceptions.ResponseError:
        cluster = False  # INFO refused (an ACL without it): a plain server's client, as before
    if not cluster:
        return plain
    plain.close()
    return RedisCluster.from_url(url, **options)


def is_cluster(client: "redis.Redis | RedisCluster") -> bool:
    return isinstance(client, RedisCluster)


def tls_hint(error: BaseException) -> str:
    """What to add to a `rediss://` URL when Redis's certificate, or the lack of the bridge's own, failed
    the handshake: redis-py reads the files from the URL's query, which nothing else says."""
    told = str(error).lower()
    if "certificate verify failed" in told:
        return "; give the CA that signed Redis's certificate in the URL: rediss://…?ssl_ca_certs=/path/ca.pem"
    # Redis asking for the bridge's certificate ends the handshake, which the client words variously.
    if any(said in told for said in ("certificate required", "handshake failure", "eof occurred in violation")):
        return (
            "; if Redis asks for the bridge's own certificate (mutual TLS), give it in the URL:"
            " rediss://…?ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem"
        )
    return ""


__all__ = ["REDIS_ERRORS", "RedisError", "connect", "is_cluster", "tls_hint"]
