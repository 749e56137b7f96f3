# Compiled only when the optional Phoenix.PubSub dependency is available
# (STYLE.md, "Optional dependencies"); `Vsmcp.CRDT.Sync.Transport.select/1`
# checks for this module before choosing it.
if Code.ensure_loaded?(Phoenix.PubSub) do
  defmodule Vsmcp.CRDT.Sync.Transport.PubSub do
    @moduledoc """
    `Vsmcp.CRDT.Sync.Transport` over a `Phoenix.PubSub` server, so sync
    follows the host application's cluster (whatever adapter and node
    discovery it configured). Compiled only when Phoenix.PubSub is available.

    Each sync topic uses two PubSub topics, with prefixes that keep them
    apart from each other and from the application's own topics:

      * `"vsmcp_crdt_sync/topic:" <> topic` - every member; `broadcast/3`
        uses `Phoenix.PubSub.broadcast_from/4` so the caller is skipped;
      * `"vsmcp_crdt_sync/direct:<byte size of topic>:" <> topic <> "/" <> key`
        - the member that joined with `key`; the length prefix keeps topic
        `"a/b"` with key `"c"` apart from topic `"a"` with key `"b/c"`.

    ## Cost

    One `Phoenix.PubSub` broadcast per call: local dispatch through its
    `Registry`, plus one message per remote node with the PG2 adapter.
    """

    @behaviour Vsmcp.CRDT.Sync.Transport

    alias Phoenix.PubSub

    @doc """
    Options: `pubsub:` (default `Vsmcp.PubSub`), the name of a running
    `Phoenix.PubSub` server; `{:error, {:pubsub_not_running, name}}` if
    none is registered under it.

        iex> alias Vsmcp.CRDT.Sync.Transport.PubSub
        iex> PubSub.start(pubsub: :doc_pubsub)
        {:error, {:pubsub_not_running, :doc_pubsub}}
        iex> {:ok, sup} = Supervisor.start_link([{Phoenix.PubSub, name: :doc_pubsub}], strategy: :one_for_one)
        iex> PubSub.start(pubsub: :doc_pubsub)
        {:ok, %{pubsub: :doc_pubsub}}
        iex> Supervisor.stop(sup)
        :ok
    """
    @impl true
    @spec start(keyword()) :: {:ok, %{pubsub: atom()}} | {:error, {:pubsub_not_running, term()}}
    def start(opts) when is_list(opts) do
      pubsub = Keyword.get(opts, :pubsub, Vsmcp.PubSub)

      if is_atom(pubsub) and is_pid(Process.whereis(pubsub)),
        do: {:ok, %{pubsub: pubsub}},
        else: {:error, {:pubsub_not_running, pubsub}}
    end

    @impl true
    def join(%{pubsub: pubsub}, topic, key) when is_binary(topic) and is_binary(key) do
      # Idempotent: the Registry would deliver once per subscription, so a
      # channel this process is subscribed to already is left alone (the
      # peer joins again at every heartbeat).
      subscribed = Registry.keys(pubsub, self())

      for channel <- [topic_channel(topic), direct_channel(topic, key)],
          channel not in subscribed do
        :ok = PubSub.subscribe(pubsub, channel)
      end

      :ok
    end

    @impl true
    def broadcast(state, topic, payload), do: broadcast_from(state, self(), topic, payload)

    @impl true
    def broadcast_from(%{pubsub: pubsub}, from, topic, payload)
        when is_pid(from) and is_binary(topic) and is_binary(payload) do
      message = {:vsmcp_crdt_sync, topic, payload}
      delivered(PubSub.broadcast_from(pubsub, from, topic_channel(topic), message))
    end

    @impl true
    def send_to(%{pubsub: pubsub}, topic, key, payload)
        when is_binary(topic) and is_binary(key) and is_binary(payload) do
      message = {:vsmcp_crdt_sync, topic, payload}
      delivered(PubSub.broadcast(pubsub, direct_channel(topic, key), message))
    end

    @impl true
    def leave(%{pubsub: pubsub}, topic, key) when is_binary(topic) and is_binary(key) do
      :ok = PubSub.unsubscribe(pubsub, topic_channel(topic))
      :ok = PubSub.unsubscribe(pubsub, direct_channel(topic, key))
    end

    # An adapter error is a lost message, which the transport contract
    # (at most once) already allows; the protocol recovers from losses.
    defp delivered(:ok), do: :ok
    defp delivered({:error, _reason}), do: :ok

    @doc false
    def topic_channel(topic), do: "vsmcp_crdt_sync/topic:" <> topic

    @doc false
    def direct_channel(topic, key),
      do: "vsmcp_crdt_sync/direct:#{byte_size(topic)}:" <> topic <> "/" <> key
  end
end
