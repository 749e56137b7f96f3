defmodule Vsmcp.CRDT.Telemetry do
  @moduledoc """
  `:telemetry` events of the store and its replication. `:telemetry` is an
  optional dependency: without it every event is a no-op (whether it is
  loaded is looked up once and kept in `:persistent_term`).

  Every event but one is emitted by a store's own processes (its GenServer
  or its sync peer), never on the path of a read or write call, so the hot
  path pays nothing for them. The exception is the per-operation event,
  off by default: when turned on (`operations/1`) it is emitted by the
  calling process, around the call. The [telemetry
  guide](telemetry.md) shows how to attach to them.

  ## Events

    * `[:vsmcp_crdt, :store, :operation]` - one store call (`get`,
      `update`, `create`, ...), **only when turned on** with `operations/1`.
      Measurements: `%{duration: native time units}`. Metadata:
      `%{operation: atom, result: :ok | :error}`.

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
      `:forgotten_replica`, `:unknown_peer`, `:local_error`.
    * `[:vsmcp_crdt, :sync, :round]` - an anti-entropy round started by
      `Vsmcp.CRDT.ContextStore.sync/2` ended. Measurements: `%{duration:
      native time units, peers: integer}`. Metadata: `%{store:, topic:,
      result: :ok | :timeout}`.
    * `[:vsmcp_crdt, :store, :decay]` - a demotion pass ran. Measurements:
      `%{duration:, hot: integer, warm: integer, hot_before: integer,
      warm_before: integer}` (items per tier after and before). Metadata:
      `%{store: pid}`.
    * `[:vsmcp_crdt, :store, :storage_error]` - the disk refused writes (full,
      read-only); emitted after a demotion pass (so at most once per
      `decay_interval`) while the store reports a write error.
      Measurements: `%{count: 1}`. Metadata: `%{store:, reason:
      String.t()}`.

  No event is emitted per merge of a peer's data or per tier move of one
  id: `Vsmcp.CRDT.ContextStore.info/1` counts them (`:ops`, `:crdts`).
  """

  @doc """
  Turn the per-operation event `[:vsmcp_crdt, :store, :operation]` on or off
  (off by default; also `config :vsmcp_crdt, telemetry_operations: true`,
  read when the application starts). Measurements: `%{duration: native
  time units}`. Metadata: `%{operation: :get | :update | :create | ...,
  result: :ok | :error}`. When off, a call pays one `:persistent_term`
  read.

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
  Whether per-operation events are on (see `operations/1`).

      iex> is_boolean(Vsmcp.CRDT.Telemetry.operations?())
      true
  """
  @spec operations?() :: boolean()
  def operations?, do: :persistent_term.get({__MODULE__, :operations}, false)

  @doc false
  # Run `fun` (one store call) and emit its operation event.
  @spec operation(atom(), (() -> result)) :: result when result: term()
  def operation(op, fun) do
    started = System.monotonic_time()
    result = fun.()

    outcome =
      case result do
        {:error, _} -> :error
        _ -> :ok
      end

    emit([:vsmcp_crdt, :store, :operation], %{duration: System.monotonic_time() - started}, %{
      operation: op,
      result: outcome
    })

    result
  end

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
