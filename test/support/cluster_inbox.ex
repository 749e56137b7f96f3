defmodule Vsmcp.Test.Cluster.Inbox do
  @moduledoc """
  A transport member to run on a peer node (through
  `Vsmcp.Test.Cluster.call/4`): joins a topic with a
  `Vsmcp.CRDT.Sync.Transport`, records every payload it receives, and
  sends on request, so that "excludes the caller" means this process.

      Cluster.call(peer, Inbox, :start, [:inbox, Transport.PG, [], "t", "a"])
      Cluster.call(peer, Inbox, :broadcast, [:inbox, "hello"])
      Cluster.call(other, Inbox, :received, [:inbox])   #=> ["hello"]

  Started unlinked (`:peer` runs each call in a short-lived process) and
  registered under the given local name.
  """

  use GenServer

  @doc "Starts the inbox: `transport.start(opts)`, then `join(topic, key)`."
  def start(name, transport, transport_opts, topic, key) do
    GenServer.start(__MODULE__, {transport, transport_opts, topic, key}, name: name)
  end

  @doc "Broadcasts `payload` on the inbox's topic from the inbox process."
  def broadcast(name, payload), do: GenServer.call(name, {:broadcast, payload})

  @doc "Sends `payload` to `key` on the inbox's topic from the inbox process."
  def send_to(name, key, payload), do: GenServer.call(name, {:send_to, key, payload})

  @doc "Leaves the topic."
  def leave(name), do: GenServer.call(name, :leave)

  @doc "Every payload received so far, oldest first."
  def received(name), do: GenServer.call(name, :received)

  @impl true
  def init({transport, transport_opts, topic, key}) do
    with {:ok, state} <- transport.start(transport_opts),
         :ok <- transport.join(state, topic, key) do
      {:ok, %{transport: {transport, state}, topic: topic, key: key, received: []}}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def handle_call({:broadcast, payload}, _from, %{transport: {module, state}} = inbox) do
    {:reply, module.broadcast(state, inbox.topic, payload), inbox}
  end

  def handle_call({:send_to, key, payload}, _from, %{transport: {module, state}} = inbox) do
    {:reply, module.send_to(state, inbox.topic, key, payload), inbox}
  end

  def handle_call(:leave, _from, %{transport: {module, state}} = inbox) do
    {:reply, module.leave(state, inbox.topic, inbox.key), inbox}
  end

  def handle_call(:received, _from, inbox) do
    {:reply, Enum.reverse(inbox.received), inbox}
  end

  @impl true
  def handle_info({:vsmcp_crdt_sync, topic, payload}, %{topic: topic} = inbox) do
    {:noreply, %{inbox | received: [payload | inbox.received]}}
  end
end
