defmodule Vsmcp.CRDT.Sync.Transport do
  @moduledoc """
  How sync messages travel between the peer processes of one store's
  replicas: the behaviour, and `select/1`, which picks an implementation.

  A transport moves opaque binaries. It knows nothing of the sync protocol
  (the versioned wire messages built in `native/`), never decodes a payload
  and never creates an atom from one. Every replica's peer process:

    1. calls `start/1` once, in its own process, to validate the options and
       get a `state` (e.g. that the Phoenix.PubSub server or the `:pg` scope
       is running);
    2. calls `join/3` with the cluster `topic` (one per replicated store) and
       its own `key` (its replica id as a string): from then on it receives
       what others `broadcast/3` on `topic` and what they `send_to/4` its
       `key`;
    3. calls `leave/3` when it stops (or just exits: every implementation
       forgets a process when it dies).

  Every delivery arrives in the receiving process's mailbox as

      {:vsmcp_crdt_sync, topic, payload}

  where `topic` is the cluster topic, also for direct messages.

  ## Guarantees

  At most once, unordered between senders, no acknowledgement. In practice
  both built-in transports deliver in order between two processes while the
  nodes stay connected, but the protocol must not depend on it:
  `Vsmcp.CRDT.Sync.Transport.Faulty` drops, duplicates and reorders on
  purpose. A message to a process on a node that is not connected is lost;
  transports never connect nodes themselves beyond what their mechanism
  does (the Erlang distribution, as configured by the application).

  ## Implementations

    * `Vsmcp.CRDT.Sync.Transport.PubSub` - through a `Phoenix.PubSub`
      server (any adapter), so it follows the host application's cluster
      setup. Compiled only when Phoenix.PubSub is available.
    * `Vsmcp.CRDT.Sync.Transport.PG` - OTP's `:pg` in a dedicated scope,
      started by this application on every node.
    * `Vsmcp.CRDT.Sync.Transport.Faulty` - wraps either one and injects
      faults; for tests and chaos runs.

  Any module implementing this behaviour can be given as `transport:`.

  Cost: per implementation (see each module's "Cost"); the behaviour adds
  nothing. Invariant: the sync protocol (delta-intervals with
  anti-entropy, Almeida, Shoker and Baquero 2018, Algorithm 2) converges
  over any transport with the guarantees above, so correctness never depends on the
  transport's ordering or reliability.
  """

  @typedoc "What `start/1` returned; passed back to every other callback."
  @type state :: term()

  @typedoc "A cluster topic: one per replicated store."
  @type topic :: String.t()

  @typedoc "A member's own address within a topic (its replica id)."
  @type key :: String.t()

  @doc """
  Validates `opts` in the calling process and returns the state the other
  callbacks take. Does not subscribe anything.
  """
  @callback start(opts :: keyword()) :: {:ok, state()} | {:error, term()}

  @doc """
  Subscribes the calling process to `topic` and to its direct channel
  `key` on `topic`. Idempotent: joining twice does not duplicate delivery.
  """
  @callback join(state(), topic(), key()) :: :ok

  @doc "Delivers `payload` to every member of `topic` except the caller."
  @callback broadcast(state(), topic(), payload :: binary()) :: :ok

  @doc """
  Delivers `payload` to whoever joined `topic` with `key` (a no-op when
  nobody did).
  """
  @callback send_to(state(), topic(), key(), payload :: binary()) :: :ok

  @doc "Undoes `join/3` for the calling process."
  @callback leave(state(), topic(), key()) :: :ok

  @doc """
  Like `broadcast/3` but excludes `from` instead of the caller. Optional:
  used by wrappers that deliver later from another process
  (`Vsmcp.CRDT.Sync.Transport.Faulty` when it delays a broadcast).
  """
  @callback broadcast_from(state(), from :: pid(), topic(), payload :: binary()) :: :ok

  @optional_callbacks broadcast_from: 4

  @default_pubsub Vsmcp.PubSub

  @doc """
  Chooses the transport for a store's sync options.

    * `transport: :pubsub` - `Vsmcp.CRDT.Sync.Transport.PubSub` through the
      server named by `pubsub:` (default `#{inspect(@default_pubsub)}`);
      `{:error, {:pubsub_not_running, name}}` when Phoenix.PubSub is not
      compiled in or no process is registered under that name.
    * `transport: :pg` - `Vsmcp.CRDT.Sync.Transport.PG`.
    * `transport: module` - that module, which must implement this
      behaviour (`{:error, {:invalid_transport, module}}` otherwise).
    * no `:transport` - `:pubsub` when it would succeed, else `:pg`.

  The transport options are `transport_opts:` (default `[]`); for PubSub the
  server name is added as `pubsub:` unless already there.

      iex> Vsmcp.CRDT.Sync.Transport.select(transport: :pg, transport_opts: [scope: :my_scope])
      {:ok, {Vsmcp.CRDT.Sync.Transport.PG, [scope: :my_scope]}}
  """
  @spec select(keyword()) :: {:ok, {module(), keyword()}} | {:error, term()}
  def select(sync_opts) when is_list(sync_opts) do
    pubsub = Keyword.get(sync_opts, :pubsub, @default_pubsub)
    transport_opts = Keyword.get(sync_opts, :transport_opts, [])

    case Keyword.get(sync_opts, :transport) do
      nil ->
        if pubsub_running?(pubsub),
          do: {:ok, pubsub_choice(pubsub, transport_opts)},
          else: {:ok, {Vsmcp.CRDT.Sync.Transport.PG, transport_opts}}

      :pubsub ->
        if pubsub_running?(pubsub),
          do: {:ok, pubsub_choice(pubsub, transport_opts)},
          else: {:error, {:pubsub_not_running, pubsub}}

      :pg ->
        {:ok, {Vsmcp.CRDT.Sync.Transport.PG, transport_opts}}

      module when is_atom(module) ->
        if implements?(module),
          do: {:ok, {module, transport_opts}},
          else: {:error, {:invalid_transport, module}}

      other ->
        {:error, {:invalid_transport, other}}
    end
  end

  defp pubsub_choice(pubsub, transport_opts) do
    {Vsmcp.CRDT.Sync.Transport.PubSub, Keyword.put_new(transport_opts, :pubsub, pubsub)}
  end

  # The transport module is compiled only with Phoenix.PubSub, so both are
  # checked: a vendored pubsub loaded at runtime without our module would
  # otherwise be chosen and fail at the first call.
  defp pubsub_running?(name) when is_atom(name) do
    Code.ensure_loaded?(Phoenix.PubSub) and
      Code.ensure_loaded?(Vsmcp.CRDT.Sync.Transport.PubSub) and
      is_pid(Process.whereis(name))
  end

  defp pubsub_running?(_name), do: false

  defp implements?(module) do
    Code.ensure_loaded?(module) and
      Enum.all?(
        [start: 1, join: 3, broadcast: 3, send_to: 4, leave: 3],
        fn {name, arity} -> function_exported?(module, name, arity) end
      )
  end
end
