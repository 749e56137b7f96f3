if Code.ensure_loaded?(Telemetry.Metrics) do
  defmodule Vsmcp.CRDT.Telemetry.Metrics do
    @moduledoc """
    `Telemetry.Metrics` definitions for the events of `Vsmcp.CRDT.Telemetry`,
    to hand to a reporter (Prometheus, StatsD, LiveDashboard, ...), and a
    measurement for `:telemetry_poller`. Compiled only when the optional
    `:telemetry_metrics` package is present.

        # in the host application's telemetry supervisor
        children = [
          {:telemetry_poller,
           measurements: [{Vsmcp.CRDT.Telemetry.Metrics, :measure_store, [Vsmcp.CRDT.ContextStore]}],
           period: 10_000},
          {TelemetryMetricsPrometheus, metrics: Vsmcp.CRDT.Telemetry.Metrics.metrics()}
        ]

    Tags are low-cardinality values only (topic, operation, result, reason,
    and for `measure_store/1` the store as given to it: pass its registered
    name, not a pid). The operation metrics only receive data
    while operation spans are on (`Vsmcp.CRDT.Telemetry.operations/1`).

    Cost: `metrics/0` builds a list once, at start; `measure_store/1` calls
    `Vsmcp.CRDT.ContextStore.info/1` (O(items in memory + pending writes),
    fine every few seconds).
    """

    import Telemetry.Metrics

    @doc """
    The metric definitions.

        iex> metrics = Vsmcp.CRDT.Telemetry.Metrics.metrics()
        iex> Enum.all?(metrics, &match?([:vsmcp_crdt | _], &1.event_name))
        true
    """
    @spec metrics() :: [Telemetry.Metrics.t()]
    def metrics do
      duration = [unit: {:native, :millisecond}]

      [
        # Sync
        counter("vsmcp_crdt.sync.peer_up.count", tags: [:topic]),
        counter("vsmcp_crdt.sync.peer_down.count", tags: [:topic]),
        counter("vsmcp_crdt.sync.rejected.count", tags: [:topic, :reason]),
        sum("vsmcp_crdt.sync.merged.entries", tags: [:topic]),
        sum("vsmcp_crdt.sync.merged.bytes", tags: [:topic]),
        sum("vsmcp_crdt.sync.collected.tombstones", tags: [:topic]),
        sum("vsmcp_crdt.sync.collected.elements", tags: [:topic]),
        sum("vsmcp_crdt.sync.sent.messages", tags: [:topic]),
        sum("vsmcp_crdt.sync.sent.bytes", unit: :byte, tags: [:topic]),
        summary("vsmcp_crdt.sync.round.stop.duration", duration ++ [tags: [:topic, :result]]),
        summary("vsmcp_crdt.sync.heartbeat.stop.duration",
          unit: {:native, :microsecond},
          tags: [:topic, :result]
        ),
        # Store lifecycle and maintenance
        summary("vsmcp_crdt.store.open.stop.duration", duration ++ [tags: [:topic, :result]]),
        summary("vsmcp_crdt.store.close.stop.duration", duration ++ [tags: [:result]]),
        summary("vsmcp_crdt.store.backup.stop.duration", duration ++ [tags: [:result]]),
        summary("vsmcp_crdt.store.dets_import.stop.duration", duration ++ [tags: [:result]]),
        summary("vsmcp_crdt.store.decay.duration", duration),
        counter("vsmcp_crdt.store.storage_error.count"),
        # Operations (only while operation spans are on)
        summary("vsmcp_crdt.operation.stop.duration",
          unit: {:native, :microsecond},
          tags: [:operation, :result]
        ),
        counter("vsmcp_crdt.operation.exception.duration", tags: [:operation, :kind]),
        # measure_store/1
        last_value("vsmcp_crdt.store.info.items", tags: [:store]),
        last_value("vsmcp_crdt.store.info.hot", tags: [:store]),
        last_value("vsmcp_crdt.store.info.warm", tags: [:store]),
        last_value("vsmcp_crdt.store.info.memory_bytes", unit: :byte, tags: [:store]),
        last_value("vsmcp_crdt.store.info.disk_bytes", unit: :byte, tags: [:store]),
        last_value("vsmcp_crdt.store.info.pending_writes", tags: [:store]),
        last_value("vsmcp_crdt.store.info.oldest_pending_ms", tags: [:store]),
        last_value("vsmcp_crdt.store.info.log_bytes", unit: :byte, tags: [:store]),
        last_value("vsmcp_crdt.store.info.peers_up", tags: [:store]),
        last_value("vsmcp_crdt.store.info.reads", tags: [:store]),
        last_value("vsmcp_crdt.store.info.writes", tags: [:store]),
        last_value("vsmcp_crdt.store.info.remote_merges", tags: [:store])
      ]
    end

    @doc """
    Emit `[:vsmcp_crdt, :store, :info]` for `store` (a pid or registered
    name), for `:telemetry_poller`. Measurements: `items` (ids in every
    tier), `hot`, `warm`, `memory_bytes` (hot, warm, pending and RocksDB
    memory), `disk_bytes` (SST and WAL files), `pending_writes` and
    `oldest_pending_ms` (write lag; 0 when nothing is pending),
    `log_bytes` (the outgoing sync log), `peers_up`, and the counters
    `reads`, `writes` and `remote_merges` since the store opened (they only
    grow: let the reporter compute rates). Metadata: `%{store: store}` as
    given. Does nothing when the store is not running.

    It calls `Vsmcp.CRDT.ContextStore.info/1`, which only reads: several
    pollers (or a poller and other callers of `info/1`) do not disturb
    each other's figures.
    """
    @spec measure_store(Vsmcp.CRDT.ContextStore.store()) :: :ok
    def measure_store(store) do
      case Vsmcp.CRDT.ContextStore.info(store) do
        %{} = info ->
          memory = info.memory
          disk = info.disk
          sync = info.sync

          peers_up =
            case sync do
              %{peers: peers} when is_list(peers) -> Enum.count(peers, & &1.up)
              _ -> 0
            end

          Vsmcp.CRDT.Telemetry.emit(
            [:vsmcp_crdt, :store, :info],
            %{
              items: info.crdts.count,
              hot: info.crdts.hot.count,
              warm: info.crdts.warm.count,
              memory_bytes:
                memory.hot_bytes + memory.warm_bytes + memory.pending_bytes +
                  memory.memtable_bytes + memory.block_cache_bytes +
                  memory.table_readers_bytes,
              disk_bytes: disk.sst_bytes + disk.wal_bytes,
              pending_writes: info.lag.pending_writes,
              oldest_pending_ms: info.lag.oldest_pending_ms || 0,
              log_bytes: Map.get(sync, :log_bytes, 0),
              peers_up: peers_up,
              reads: info.ops.reads,
              writes: info.ops.writes,
              remote_merges: info.ops.remote_merges
            },
            %{store: store}
          )

        {:error, _} ->
          :ok
      end

      :ok
    end
  end
end
