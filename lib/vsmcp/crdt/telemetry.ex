defmodule Vsmcp.CRDT.Telemetry do
  @moduledoc """
  `:telemetry` events of the store and its replication. `:telemetry` is an
  optional dependency: without it every event is a no-op (whether it is
  loaded is looked up once and kept in `:persistent_term`).

  Every event but the operation span is emitted by a store's own processes
  or around calls that touch the disk (open, close, backup, import), never
  on the path of a read or write, so the hot path pays nothing for them.
  The operation span is off by default: when turned on (`operations/1`) it
  is emitted by the calling process, around each call. The [telemetry
  guide](telemetry.md) shows how to attach to them, and
  `Vsmcp.CRDT.Telemetry.Metrics` (with the optional `:telemetry_metrics`)
  turns them into metric definitions.

  ## Spans

  Each span is three events, as `:telemetry.span/3` emits them: `prefix ++
  [:start]` (measurements `%{system_time:, monotonic_time:}`), then `prefix
  ++ [:stop]` (`%{duration:, monotonic_time:}`, native time units; metadata
  with `result: :ok | :error` added) or `prefix ++ [:exception]` (metadata
  with `kind:, reason:, stacktrace:`).

    * `[:vsmcp_crdt, :operation]` - one store call, **only when turned
      on** with `operations/1`. Metadata: `%{operation: atom, store: pid,
      name: registered name | nil}`; `operation` is the call (`:get`,
      `:create`, `:delete`, `:member`, `:metadata`, ...) or, for updates,
      the operation itself (`:increment`, `:decrement`, `:add`, `:remove`,
      `:set`).
    * `[:vsmcp_crdt, :store, :open]` - `start_link/1` opening a store
      (resolving its location, opening RocksDB, a DETS import). Metadata:
      `%{name: term | nil, topic: String.t() | nil}`.
    * `[:vsmcp_crdt, :store, :close]` - a store closing (writing what is
      pending). Metadata: `%{store: pid}`.
    * `[:vsmcp_crdt, :store, :backup]` - `ContextStore.backup/2`.
      Metadata: `%{store: pid, dir: String.t()}`.
    * `[:vsmcp_crdt, :store, :dets_import]` - the import of a replaced
      store's DETS file at a first start. Metadata: `%{file: String.t(),
      path: String.t()}`.
    * `[:vsmcp_crdt, :sync, :round]` - an anti-entropy round of
      `Vsmcp.CRDT.ContextStore.sync/2`, from its start until every peer
      answered or the timeout (`:start` and `:stop` only; both carry
      `peers: integer` too). Metadata: `%{store:, topic:}`, and `result:
      :ok | :timeout` on `:stop`.
    * `[:vsmcp_crdt, :sync, :heartbeat]` - the periodic work of a
      heartbeat (every `:heartbeat_interval` ms, 1 s by default): the
      engine brings its digest up to date (while a large store's digest is
      first built, a step of it of about 50 ms) and
      broadcasts the hello. Metadata: `%{store:, topic:}`.

  ## Events

    * `[:vsmcp_crdt, :sync, :peer_up]` - a peer was seen for the first time
      or again. Measurements: `%{count: 1}`. Metadata: `%{store: pid,
      topic: String.t(), peer: key, node: String.t()}`.
    * `[:vsmcp_crdt, :sync, :peer_down]` - a peer went silent, restarted or
      was forgotten. Measurements: `%{count: 1}`. Metadata: `%{store:,
      topic:, peer:}`.
    * `[:vsmcp_crdt, :sync, :rejected]` - input from a peer was refused.
      Measurements: `%{count: 1}`. Metadata: `%{store:, topic:, peer: key
      | nil, reason: atom}` with `reason` one of `:malformed`,
      `:unsupported_version`, `:oversized`, `:clock_ahead`, `:type_clash`,
      `:forgotten_replica`, `:unknown_peer`, `:local_error`, `:busy`,
      `:too_many_peers`, `:unauthenticated`, `:stale` (the last two with
      `secret:`, see the security guide).
    * `[:vsmcp_crdt, :sync, :sent]` - messages handed to the transport
      at once: the deltas and retransmissions of a tick, or the replies to
      one message from a peer. Measurements: `%{messages: integer, bytes:
      integer}` (a broadcast counted once). Metadata: `%{store:, topic:}`.
      Nothing is emitted when nothing is sent, so an idle store emits only
      its heartbeats.
    * `[:vsmcp_crdt, :sync, :merged]` - a message from a peer merged
      entries (deltas or states) into the store. Measurements: `%{entries:
      integer, bytes: integer}` (the message's size). Metadata: `%{store:,
      topic:}`. One event per message, not per entry.
    * `[:vsmcp_crdt, :sync, :collected]` - a collection dropped delete
      tombstones or remove-wins set elements (with their remove tokens)
      once every member had them. Measurements: `%{tombstones: integer,
      elements: integer}`. Metadata: `%{store:, topic:}`.
    * `[:vsmcp_crdt, :store, :decay]` - a demotion pass ran. Measurements:
      `%{duration:, hot: integer, warm: integer, hot_before: integer,
      warm_before: integer}` (items per tier after and before). Metadata:
      `%{store: pid}`.
    * `[:vsmcp_crdt, :store, :storage_error]` - the disk refused writes (full,
      read-only); emitted after a demotion pass (so at most once per
      `decay_interval`) while the store reports a write error.
      Measurements: `%{count: 1}`. Metadata: `%{store:, reason:
      String.t()}`.

  No event is emitted per merged entry or per tier move of one id:
  `Vsmcp.CRDT.ContextStore.info/1` counts them (`:ops`, `:crdts`).
  """

  @doc """
  Turn the operation span `[:vsmcp_crdt, :operation, ...]` on or off (off
  by default; also `config :vsmcp_crdt, telemetry_operations: true`, read
  when the application starts). When off, a call pays one
  `:persistent_term` read.

      iex> Vsmcp.CRDT.Telemetry.operations(false)
      :ok
      iex> Vsmcp.CRDT.Telemetry.operations?()
      false
  """
  @spec operations(boolean()) :: :ok
  def operations(on?) when is_boolean(on?) do
    if operations?() != on?, do: :persistent_term.put({__MODULE__, :operations}, on?)
    :ok
  end

  @doc """
  Whether operation spans are on (see `operations/1`).

      iex> is_boolean(Vsmcp.CRDT.Telemetry.operations?())
      true
  """
  @spec operations?() :: boolean()
  def operations?, do: :persistent_term.get({__MODULE__, :operations}, false)

  @doc false
  # The operation span around `fun`, one call on the store `pid`.
  @spec operation(atom(), pid(), (() -> result)) :: result when result: term()
  def operation(op, pid, fun) do
    name =
      case Process.info(pid, :registered_name) do
        {:registered_name, name} when is_atom(name) -> name
        _ -> nil
      end

    span([:vsmcp_crdt, :operation], %{operation: op, store: pid, name: name}, fun)
  end

  @doc false
  # The name an update's span carries: the operation's own (`:increment`,
  # `:add`, ...), else `:update`.
  @spec update_name(term()) :: atom()
  def update_name({op, _}) when op in [:increment, :decrement, :add, :remove, :set], do: op
  def update_name(_), do: :update

  @doc """
  Run `fun` inside the span `prefix` (`:telemetry.span/3`) when `:telemetry`
  is available, else just run it. The stop event's metadata is `metadata`
  plus `result: :error` when `fun` returned `{:error, _}`, else `:ok`.

      iex> Vsmcp.CRDT.Telemetry.span([:vsmcp_crdt, :doc, :example], %{}, fn -> {:ok, 1} end)
      {:ok, 1}
  """
  @spec span([atom()], map(), (() -> result)) :: result when result: term()
  def span(prefix, metadata, fun) do
    if available?() do
      apply(:telemetry, :span, [
        prefix,
        metadata,
        fn ->
          result = fun.()
          {result, Map.put(metadata, :result, outcome(result))}
        end
      ])
    else
      fun.()
    end
  end

  defp outcome({:error, _}), do: :error
  defp outcome(_), do: :ok

  @doc """
  Emit `event` when `:telemetry` is available.

      iex> Vsmcp.CRDT.Telemetry.emit([:vsmcp_crdt, :doc, :example], %{count: 1}, %{})
      :ok
  """
  @spec emit([atom()], map(), map()) :: :ok
  def emit(event, measurements, metadata) do
    if available?() do
      # apply/3: the module is optional at compile time.
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    :ok
  end

  defp available? do
    case :persistent_term.get(__MODULE__, nil) do
      nil ->
        loaded = Code.ensure_loaded?(:telemetry)
        :persistent_term.put(__MODULE__, loaded)
        loaded

      loaded ->
        loaded
    end
  end
end
