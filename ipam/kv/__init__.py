"""netweft's key-value layer (installed as ``netweft.kv``; the folder sits under ``ipam/`` only
because the repository's top-level folders are fixed — it imports nothing from IPAM).

- :mod:`netweft.kv.types`: ``KeyValue``, watch events and batches, the ``EtcdError`` family;
- :mod:`netweft.kv.protocol`: the ``KV`` protocol everything else is written against;
- :mod:`netweft.kv.etcd`: ``EtcdSettings`` and ``EtcdClient``, the real store (etcd v3 over its
  JSON gateway);
- :mod:`netweft.kv.memory`: ``MemoryKV``, the same protocol in memory for pure unit tests;
- :mod:`netweft.kv.reflector`: ``Reflector``, the one list-then-watch loop (re-list after
  compaction, resume after a broken stream, backoff);
- :mod:`netweft.kv.backoff`: exponential backoff with jitter.
"""

