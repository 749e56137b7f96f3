defmodule Vsmcp.CRDT.ContextStore.Options.Schemas do
  # The NimbleOptions schemas of `Vsmcp.CRDT.ContextStore.Options`, one per
  # option group; the docs of that module are generated from them. Internal.
  @moduledoc false

  @max_size 2 ** 48
  @max_u32 2 ** 32 - 1
  @max_ms 2 ** 32 - 1

  # The replaced store's `:storage_opts` keys, accepted and ignored.
  @compat_storage [:ets_name, :dets_name]

  @store [
    node_id: [
      type: :any,
      doc: "This replica's label, any term (default `node()`)."
    ],
    name: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_name, []},
      doc:
        "Register the store under this name: an atom, `{:global, term}` or " <>
          "`{:via, module, term}`."
    ],
    durability: [
      type: {:in, [:relaxed, :strict]},
      doc:
        "`:relaxed` (the default: acknowledged writes reach RocksDB's write-ahead log within " <>
          "`:flush_interval` ms) or `:strict` (acknowledged once in the log). Also accepted in " <>
          "`:storage_opts`; this one wins."
    ],
    storage_opts: [
      type: :keyword_list,
      doc: "Where and how the store keeps its data (below)."
    ],
    sync_opts: [
      type: :keyword_list,
      doc: "Distributed sync (below)."
    ]
  ]

  @storage [
    data_dir: [
      type: :any,
      doc: "The RocksDB directory (a path); see `Vsmcp.CRDT.Storage.Location`."
    ],
    dets_file: [
      type: :any,
      doc:
        "The legacy location: a marker file whose directory holds the data; the replaced " <>
          "application's DETS file there is imported at the first start " <>
          "(`Vsmcp.CRDT.Storage.DetsImport`)."
    ],
    memory_limit: [
      type: {:in, 0..@max_size},
      doc:
        "Items kept decoded in the hot tier (default 10_000; 0 acts as 1). Accepted: `0..2^48`."
    ],
    ets_limit: [
      type: {:in, 0..@max_size},
      doc: "Items kept encoded in the warm tier (default 100_000). Accepted: `0..2^48`."
    ],
    access_threshold: [
      type: {:in, 0..@max_u32},
      doc:
        "Reads before a warm item is promoted to hot (default 3; 0 acts as 1). Accepted: `0..2^32-1`."
    ],
    decay_interval: [
      type: {:or, [nil, {:in, 0..@max_ms}]},
      doc:
        "Milliseconds between demotion passes (default 60_000; 0 disables them). Accepted: `0..2^32-1`."
    ],
    flush_interval: [
      type: {:in, 0..@max_ms},
      doc:
        "Milliseconds of group commit for relaxed writes (default 5; 0 acts as 1). Accepted: `0..2^32-1`."
    ],
    max_value_bytes: [
      type: {:in, 0..@max_size},
      doc:
        "The largest id, element or value, in encoded bytes (default 16 MiB); larger ones " <>
          "get `{:error, {:value_too_large, size, max}}`. Accepted: `0..2^48`."
    ],
    max_clock_offset: [
      type: {:in, 0..@max_ms},
      doc:
        "Milliseconds a peer's clock may be ahead of ours (default 500). Accepted: `0..2^32-1`."
    ],
    memory_budget: [
      type: {:in, 0..@max_size},
      doc:
        "Bytes the store sizes its fixed memory costs by (default 256 MiB; see the operations " <>
          "guide): RocksDB's block cache takes a quarter, its two memtables a quarter, its " <>
          "write-ahead log is flushed " <>
          "beyond a quarter; budgets under 32 MiB act as 32 MiB. Accepted: `0..2^48`."
    ],
    cache_bytes: [
      type: {:in, 0..@max_size},
      doc:
        "RocksDB's block cache, in bytes (default: a quarter of `:memory_budget`). " <>
          "Accepted: `0..2^48`."
    ],
    durability: [
      type: {:in, [:relaxed, :strict]},
      doc: "As the top-level `:durability`, which wins over this one."
    ]
  ]

  @sync [
    enabled: [
      type: :boolean,
      doc:
        "`false` keeps the store local; `true` with a `:name` and no `:topic` derives the " <>
          "topic from the name. A store syncs when it has a topic and is not disabled."
    ],
    topic: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_topic, []},
      doc: "The sync topic (1 to 255 bytes): stores of one topic replicate each other."
    ],
    transport: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_module, []},
      doc:
        "`:pubsub`, `:pg` or a `Vsmcp.CRDT.Sync.Transport` module (default: chosen at " <>
          "start, see `Vsmcp.CRDT.Sync.Transport.select/1`)."
    ],
    pubsub: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_module, []},
      doc: "The Phoenix.PubSub server (default `Vsmcp.PubSub`)."
    ],
    transport_opts: [
      type: {:list, :any},
      doc: "Options for the transport module."
    ],
    tick_interval: [
      type: {:in, 1..@max_ms},
      doc: "Milliseconds between sync ticks (default 5). Accepted: `1..2^32-1`."
    ],
    heartbeat_interval: [
      type: {:in, 1..@max_ms},
      doc: "Milliseconds between hellos (default 1000). Accepted: `1..2^32-1`."
    ],
    down_after: [
      type: {:in, 1..@max_ms},
      doc:
        "Milliseconds of silence after which a peer is down (default 5000). Accepted: `1..2^32-1`."
    ],
    retransmit_interval: [
      type: {:in, 1..@max_ms},
      doc:
        "Milliseconds before unacknowledged deltas are resent (default 200). Accepted: `1..2^32-1`."
    ],
    collect_after: [
      type: {:in, 0..@max_ms},
      doc:
        "Milliseconds between two runs of the collection of stable remove tokens and " <>
          "delete tombstones (default 2000). Accepted: `0..2^32-1`."
    ],
    member_expiry: [
      type: {:in, 0..@max_ms},
      doc:
        "Milliseconds a member replica may stay unheard before it leaves the membership " <>
          "(default 86_400_000; 0: never). Accepted: `0..2^32-1`."
    ],
    max_log_bytes: [
      type: {:in, 0..@max_size},
      doc: "Bound of the outgoing delta log, in bytes (default 64 MiB). Accepted: `0..2^48`."
    ],
    decode: [
      type: {:in, [:trusted, :safe]},
      doc:
        "`:safe` for peers across a trust boundary: every id, element and value read back " <>
          "is decoded with existing atoms only and `binary_to_term(_, [:safe])` rules; one " <>
          "that cannot be reads as a `Vsmcp.CRDT.UnsafeTerm` (default `:trusted`: as DETS, " <>
          "stored terms are read back with their atoms)."
    ],
    secret: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_secret, []},
      doc:
        "Authenticate every sync message with a keyed BLAKE3 MAC (see the distributed sync " <>
          "guide): a binary of 16 to 4096 bytes, or a list of 1 to 4 of them during a key " <>
          "rotation (the first signs, all are accepted). Every store of the topic needs it. " <>
          "An invalid one is reported as `:redacted`."
    ],
    wire_versions: [
      type: {:custom, Vsmcp.CRDT.ContextStore.Options, :validate_versions, []},
      doc: "The wire versions this store speaks (tests of rolling upgrades)."
    ]
  ]

  def store, do: @store
  def storage, do: @storage
  def sync, do: @sync
  def compat_storage, do: @compat_storage

  # The whole schema: the store's keys with the groups nested.
  def store_with_groups do
    @store
    |> Keyword.update!(:storage_opts, &Keyword.put(&1, :keys, @storage))
    |> Keyword.update!(:sync_opts, &Keyword.put(&1, :keys, @sync))
  end
end
