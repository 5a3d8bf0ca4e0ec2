"""A client for a Redis server, a Redis Cluster or a primary Redis Sentinel watches, whichever the URL leads to.

Managed Redis often runs in cluster mode (ElastiCache, Memorystore, Azure Cache): a plain client
talking to one of its nodes gets MOVED for every key that node does not hold. The server says which
it is (`INFO cluster`): for a cluster, redis-py's cluster client, which follows the slots to their
nodes and fails over with them. One round trip, once, when the bridge opens the connection.

Redis run by hand for high availability (the Helm charts' "replication" architecture) has Sentinel
fail over a primary to a replica, and a client must ask the Sentinels where the primary is now: an
address of the old one leads, after a failover, to a replica that refuses every write. redis-py's
Sentinel client does that asking; it has no URL of its own, so the bridge reads the one Prefect,
LangChain and RedisVL read: `redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]`
(`rediss+sentinel://` over TLS), Sentinels on 26379 unless said.
"""

from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError
from redis.sentinel import Sentinel

from otel_bridge.config import SENTINEL_SCHEMES
from otel_bridge.urls import sentinels_of

# Options of the URL's query that are the Sentinels' own, not the data nodes'.
_SENTINELS_OWN = ("sentinel_username", "sentinel_password")

# What a Redis client raises when Redis fails it: a cluster client that reaches no node at all raises an
# exception of its own that is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def connect(url: str, **options: Any) -> "redis.Redis | RedisCluster":
    """A client of the Redis at `url`: a cluster client when that server is a node of a cluster, and the
    primary of a Sentinel's service for a `redis+sentinel://` URL.

    Raises what redis-py raises when the server cannot be reached, ValueError for a URL it cannot read."""
    if url.startswith(SENTINEL_SCHEMES):
        return _primary_of(url, **options)
    plain = redis.Redis.from_url(url, **options)
    try:
        cluster = bool(plain.info("cluster").get("cluster_enabled"))
    except redis.exceptions.ResponseError:
        cluster = False  # INFO refused (an ACL without it): a plain server's client, as before
    if not cluster:
        return plain
    plain.close()
    return RedisCluster.from_url(url, **options)


def _primary_of(url: str, **options: Any) -> redis.Redis:
    """redis-py's client of the primary the Sentinels at `url` watch: it asks them where it is at each new
    connection, and drops its connections when a failover moved it (a write refused as READONLY too)."""
    sentinels, service, db = sentinels_of(url)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    own = {key[len("sentinel_") :]: query.pop(key) for key in _SENTINELS_OWN if key in query}
    tls = url.startswith("rediss+")
    # The data nodes' options as redis-py reads them from a URL of its own (user, password, db, ssl_*).
    userinfo = parts.netloc.rpartition("@")[0]
    plain = f"{'rediss' if tls else 'redis'}://{userinfo}{'@' if userinfo else ''}x/{db}?{urlencode(query)}"
    data: dict[str, Any] = parse_url(plain)  # type: ignore[no-untyped-call]
    for key in ("host", "port", "connection_class"):  # the Sentinels say where; redis-py picks the class
        data.pop(key, None)
    if tls:
        data["ssl"] = True
    # The Sentinels over TLS as the nodes are, with their CA; and never waited on for ever (no timeout).
    ssl = {k: v for k, v in data.items() if k.startswith("ssl")}
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    # redis-py types its Sentinel from 8.2 on, not before: called through Any, as either types it.
    sentinel: Any = Sentinel
    watchers = sentinel(sentinels, sentinel_kwargs=own | ssl | timeouts, **data)
    return cast(redis.Redis, watchers.master_for(service, **options))


def is_cluster(client: "redis.Redis | RedisCluster") -> bool:
    return isinstance(client, RedisCluster)


def tls_hint(error: BaseException, url: str) -> str:
    """What to add to a `rediss://` URL when Redis's certificate, or the lack of the bridge's own, failed
    the handshake: redis-py reads the files from the URL's query, which nothing else says."""
    told = str(error).lower()
    if "certificate verify failed" in told:
        return "; give the CA that signed Redis's certificate in the URL: rediss://…?ssl_ca_certs=/path/ca.pem"
    # Redis asking for the bridge's certificate ends the handshake, which the client words variously. Over
    # TLS 1.3 the client's side of the handshake is done before Redis has read it: the refusal may come as
    # a reset of the connection at the first command instead (one run in a few).
    refused = ("certificate required", "handshake failure", "eof occurred in violation")
    reset = ("connection reset by peer", "broken pipe")
    no_certificate_given = url.startswith("rediss") and "ssl_certfile" not in url
    if any(said in told for said in refused) or (no_certificate_given and any(said in told for said in reset)):
        return (
            "; if Redis asks for the bridge's own certificate (mutual TLS), give it in the URL:"
            " rediss://…?ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem"
        )
    return ""


__all__ = ["REDIS_ERRORS", "RedisError", "connect", "is_cluster", "tls_hint"]
