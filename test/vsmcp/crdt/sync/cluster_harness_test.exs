defmodule Vsmcp.CRDT.Sync.ClusterHarnessTest do
  # Proves Vsmcp.Test.Cluster on real :peer nodes, and the transports
  # across nodes: delivery, partitions, healing, a killed node.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Sync.Transport
  alias Vsmcp.Test.Cluster
  alias Vsmcp.Test.Cluster.Inbox

  import Cluster, only: [eventually: 1]

  @moduletag :cluster
  @moduletag timeout: 120_000

  @topic "harness"

  defp start_inboxes(peers, transport, opts) do
    for {peer, key} <- Enum.zip(peers, ["a", "b", "c"]) do
      {:ok, _} = Cluster.call(peer, Inbox, :start, [:inbox, transport, opts, @topic, key])
    end
  end

  defp received(peer), do: Cluster.call(peer, Inbox, :received, [:inbox])

  defp broadcast(peer, payload),
    do: :ok = Cluster.call(peer, Inbox, :broadcast, [:inbox, payload])

  # Waits until `peer`'s :pg scope lists `count` members of the topic, i.e.
  # until it has learned the members on the nodes it is connected to.
  defp await_members(peer, count) do
    eventually(fn ->
      members =
        Cluster.call(peer, :pg, :get_members, [Transport.PG.default_scope(), {:topic, @topic}])

      length(members) == count
    end)
  end

  @tag :tmp_dir
  test "three nodes: pg delivery, a partition, healing and kill -9", %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)

    # Connected pairwise, and only through explicit connects: the runner
    # is not part of the cluster.
    for p <- peers do
      assert Enum.sort(Cluster.nodes(p)) == Enum.sort(for q <- peers, q != p, do: q.node)
      assert Cluster.call(p, File, :cwd!, []) == p.dir
      assert String.starts_with?(p.dir, tmp_dir)
    end

    refute Enum.any?(peers, &(&1.node in Node.list()))

    start_inboxes(peers, Transport.PG, [])
    for p <- peers, do: await_members(p, 3)

    broadcast(a, "from a")
    eventually(fn -> received(b) == ["from a"] and received(c) == ["from a"] end)
    assert received(a) == []

    :ok = Cluster.call(b, Inbox, :send_to, [:inbox, "c", "b to c"])
    eventually(fn -> received(c) == ["from a", "b to c"] end)

    # {a} | {b, c}
    Cluster.partition([a], [b, c])
    assert Cluster.nodes(a) == []
    assert Cluster.nodes(b) == [c.node]
    await_members(a, 1)
    await_members(b, 2)

    broadcast(a, "a alone")
    broadcast(b, "b in partition")
    :ok = Cluster.call(a, Inbox, :send_to, [:inbox, "b", "a to b in partition"])
    eventually(fn -> List.last(received(c)) == "b in partition" end)
    # a's sends returned before b's: had they gone anywhere, they would
    # have arrived by now (there is no connection left to carry them).
    assert received(b) == ["from a"]
    assert received(c) == ["from a", "b to c", "b in partition"]
    assert received(a) == []

    Cluster.heal([a], [b, c])
    for p <- peers, do: await_members(p, 3)

    broadcast(a, "healed")

    eventually(fn -> List.last(received(b)) == "healed" and List.last(received(c)) == "healed" end)

    broadcast(c, "c after heal")
    eventually(fn -> received(a) == ["c after heal"] end)

    # kill -9: the OS process goes, the others see it leave.
    os_pid = Cluster.os_pid(c)
    assert Cluster.alive?(c)
    Cluster.kill9(c)
    refute Cluster.alive?(c)
    assert {_, status} = System.cmd("kill", ["-0", os_pid], stderr_to_stdout: true)
    assert status != 0
    eventually(fn -> Cluster.nodes(a) == [b.node] and Cluster.nodes(b) == [a.node] end)
    await_members(a, 2)

    # Restarted with the same name and directory, it rejoins.
    c2 = Cluster.restart(c, connect_to: [a, b])
    assert c2.node == c.node and c2.dir == c.dir and c2.os_pid != os_pid
    {:ok, _} = Cluster.call(c2, Inbox, :start, [:inbox, Transport.PG, [], @topic, "c"])
    for p <- [a, b, c2], do: await_members(p, 3)
    broadcast(b, "to the new c")
    eventually(fn -> received(c2) == ["to the new c"] end)

    Cluster.stop([a, b, c2])
    refute Enum.any?([a, b, c2], &Cluster.alive?/1)
  end

  @tag :tmp_dir
  test "PubSub transport across nodes, and a partition", %{tmp_dir: tmp_dir} do
    pubsub = Vsmcp.Test.ClusterPubSub
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir, pubsub: pubsub)

    for p <- peers do
      assert {:ok, {Transport.PubSub, [pubsub: ^pubsub]}} =
               Cluster.call(p, Transport, :select, [[pubsub: pubsub]])
    end

    start_inboxes(peers, Transport.PubSub, pubsub: pubsub)

    # Phoenix.PubSub learns remote servers through its own :pg scope; poll
    # with fresh payloads until a broadcast from a reaches both.
    eventually(fn ->
      broadcast(a, "probe")
      "probe" in received(b) and "probe" in received(c)
    end)

    :ok = Cluster.call(c, Inbox, :send_to, [:inbox, "a", "c to a"])
    eventually(fn -> "c to a" in received(a) end)
    refute "c to a" in received(b)

    Cluster.partition([a], [b, c])
    broadcast(a, "a alone")
    eventually(fn -> broadcast(b, "b side") == :ok and "b side" in received(c) end)
    refute "a alone" in received(b)
    refute "a alone" in received(c)
    refute "b side" in received(a)
  end

  test "app_env reaches the nodes, per node when given a function" do
    peers =
      Cluster.start(2,
        connect: false,
        app_env: fn peer -> [{:vsmcp_crdt, :harness_probe, peer.dir}] end
      )

    for p <- peers do
      assert Cluster.call(p, Application, :get_env, [:vsmcp_crdt, :harness_probe]) == p.dir
      assert Cluster.nodes(p) == []
    end
  end
end
