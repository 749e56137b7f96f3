defmodule Vsmcp.CRDT.HLCTest do
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.HLC

  defp now_ms, do: System.os_time(:millisecond)

  test "new/1 starts at physical time with counter 0" do
    before = now_ms()
    clock = HLC.new(:node1)
    assert %HLC{counter: 0, node_id: :node1} = clock
    assert clock.timestamp >= before and clock.timestamp <= now_ms()
  end

  test "tick is strictly monotonic" do
    clocks = Enum.scan(1..2_000, HLC.new(:n), fn _, c -> HLC.tick(c) end)

    clocks
    |> Enum.chunk_every(2, 1, :discard)
    |> Enum.each(fn [a, b] ->
      assert HLC.before?(a, b)
      assert {b.timestamp, b.counter} > {a.timestamp, a.counter}
    end)
  end

  test "tick of a clock ahead of physical time bumps the counter" do
    ahead = %HLC{timestamp: now_ms() + 60_000, counter: 7, node_id: :n}
    assert %HLC{timestamp: ts, counter: 8} = HLC.tick(ahead)
    assert ts == ahead.timestamp
  end

  test "the counter never wraps: an exhausted counter advances the wall time" do
    ahead = %HLC{timestamp: now_ms() + 60_000, counter: 0xFFFF_FFFF, node_id: :n}
    next = HLC.tick(ahead)
    assert next.timestamp == ahead.timestamp + 1 and next.counter == 0
    assert HLC.after?(next, ahead)
  end

  test "receive_event is greater than both clocks and keeps the local node id" do
    local = HLC.new(:local)
    remote = %HLC{timestamp: now_ms() + 200, counter: 5, node_id: :remote}

    assert %HLC{node_id: :local} = next = HLC.receive_event(local, remote)
    assert HLC.after?(next, local)
    assert {next.timestamp, next.counter} > {remote.timestamp, remote.counter}

    old_remote = %HLC{timestamp: 1_000, counter: 99, node_id: :remote}
    next2 = HLC.receive_event(next, old_remote)
    assert HLC.after?(next2, next) and HLC.after?(next2, old_remote)
  end

  test "receive_event with equal wall times takes the larger counter plus one" do
    ts = now_ms() + 100
    local = %HLC{timestamp: ts, counter: 3, node_id: :a}
    remote = %HLC{timestamp: ts, counter: 9, node_id: :b}
    assert %HLC{timestamp: ^ts, counter: 10, node_id: :a} = HLC.receive_event(local, remote)
  end

  test "a remote clock far in the future is rejected" do
    local = HLC.new(:local)
    remote = %HLC{timestamp: now_ms() + 3_600_000, counter: 0, node_id: :remote}

    assert {:error, {:clock_skew, ahead}} = HLC.receive_event(local, remote)
    assert ahead >= 3_599_000

    # The bound is configurable per call.
    assert {:error, {:clock_skew, _}} =
             HLC.receive_event(local, %{remote | timestamp: now_ms() + 5_000}, max_offset: 1_000)

    assert %HLC{} =
             HLC.receive_event(local, %{remote | timestamp: now_ms() + 5_000}, max_offset: 60_000)
  end

  test "the default bound comes from the application environment" do
    # Read, not written: other async tests share the application env.
    assert Application.get_env(:vsmcp_crdt, :hlc_max_offset_ms, 500) == 500
    local = HLC.new(:local)

    assert {:error, {:clock_skew, _}} =
             HLC.receive_event(local, %{local | timestamp: now_ms() + 10_000})

    assert %HLC{} = HLC.receive_event(local, %{local | timestamp: now_ms() + 100})
  end

  test "compare orders by timestamp, counter, then node id" do
    a = %HLC{timestamp: 10, counter: 0, node_id: :a}
    assert HLC.compare(a, %{a | timestamp: 11}) == :lt
    assert HLC.compare(a, %{a | counter: 1}) == :lt
    assert HLC.compare(%{a | timestamp: 11}, %{a | counter: 5}) == :gt
    assert HLC.compare(a, a) == :eq
    assert HLC.compare(a, %{a | node_id: :b}) == :lt
    assert HLC.compare(%{a | node_id: :b}, a) == :gt
    refute HLC.before?(a, a)
    refute HLC.after?(a, a)
  end

  test "concurrent? means same clock, different node" do
    a = %HLC{timestamp: 10, counter: 2, node_id: :a}
    assert HLC.concurrent?(a, %{a | node_id: :b})
    refute HLC.concurrent?(a, a)
    refute HLC.concurrent?(a, %{a | counter: 3, node_id: :b})
    # Node ids are compared exactly: 1 and 1.0 are different nodes.
    assert HLC.concurrent?(%{a | node_id: 1}, %{a | node_id: 1.0})
  end

  test "to_string/from_string round-trip atom, string, integer and other node ids" do
    node_ids = [
      :node1,
      :"node1@127.0.0.1",
      :"with:colon@and space",
      :ünïcode,
      nil,
      "node-1",
      "with @ and : and /",
      "",
      <<0, 255, 10>>,
      "ünïcode",
      0,
      42,
      -17,
      2 ** 100,
      {:node, 1},
      [1, "two", :three],
      %{region: "eu"},
      1.5,
      self()
    ]

    for node_id <- node_ids,
        {ts, c} <- [{0, 0}, {1_700_000_000_123, 42}, {0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF}] do
      clock = %HLC{timestamp: ts, counter: c, node_id: node_id}
      string = HLC.to_string(clock)
      assert String.starts_with?(string, "#{ts}:#{c}@")
      assert HLC.from_string(string) == {:ok, clock}, "#{inspect(node_id)} via #{inspect(string)}"
    end
  end

  test "the string form is readable for the common node ids" do
    assert HLC.to_string(%HLC{timestamp: 5, counter: 1, node_id: :node1}) == "5:1@a:node1"
    assert HLC.to_string(%HLC{timestamp: 5, counter: 1, node_id: "node 1"}) == "5:1@s:node%201"
    assert HLC.to_string(%HLC{timestamp: 5, counter: 1, node_id: 7}) == "5:1@i:7"
  end

  test "from_string rejects garbage" do
    garbage = [
      "",
      "garbage",
      "1:2",
      "1:2@",
      "1:2@x:foo",
      "1:2@a",
      "a:2@a:node1",
      "1:b@a:node1",
      "-1:2@a:node1",
      "1:-2@a:node1",
      " 1:2@a:node1",
      "1:2@a:node1\n" <> "x:y",
      "18446744073709551616:0@a:node1",
      "1:4294967296@a:node1",
      "1:2@i:12x",
      "1:2@i:",
      "1:2@s:%zz",
      "1:2@s:%",
      "1:2@t:not base64!",
      "1:2@t:" <> Base.url_encode64("not a term", padding: false),
      "1:2@t:" <> Base.url_encode64(:erlang.term_to_binary(1) <> "trailing", padding: false),
      "1:2@t:" <> Base.url_encode64(:erlang.term_to_binary({:ok, &Enum.map/2}), padding: false),
      :not_a_string,
      123,
      nil
    ]

    for g <- garbage do
      assert HLC.from_string(g) == {:error, :invalid_format}, inspect(g)
    end
  end

  test "invalid clocks raise ArgumentError" do
    good = HLC.new(:n)

    for bad <- [
          nil,
          %{timestamp: 1, counter: 0, node_id: :n},
          %{good | timestamp: -1},
          %{good | timestamp: 2 ** 64},
          %{good | counter: 2 ** 32},
          %{good | counter: 1.0},
          %{good | timestamp: "1"}
        ] do
      assert_raise ArgumentError, fn -> HLC.tick(bad) end
      assert_raise ArgumentError, fn -> HLC.receive_event(good, bad) end
      assert_raise ArgumentError, fn -> HLC.receive_event(bad, good) end
      assert_raise ArgumentError, fn -> HLC.compare(good, bad) end
      assert_raise ArgumentError, fn -> HLC.concurrent?(bad, good) end
      assert_raise ArgumentError, fn -> HLC.to_string(bad) end
    end

    assert_raise ArgumentError, ~r/max_offset/, fn ->
      HLC.receive_event(good, good, max_offset: -1)
    end
  end
end

defmodule Vsmcp.CRDT.HLCAtomTableTest do
  # Not async: the atom count is global, and other tests (code loading,
  # decoding CRDT states) may create atoms while this one counts.
  use ExUnit.Case, async: false
  use ExUnitProperties

  alias Vsmcp.CRDT.HLC

  test "from_string of an unknown atom is invalid and creates no atom" do
    name = "vsmcp_hlc_test_never_an_atom_#{System.unique_integer([:positive])}"
    etf_of_new_atom = <<131, 119, byte_size(name)>> <> name
    # Load everything from_string and StreamData use before counting.
    junk_strings(fn _ -> :ok end)
    HLC.from_string("1:2@s:warm%20up")
    HLC.from_string("1:2@t:" <> Base.url_encode64(:erlang.term_to_binary({1}), padding: false))
    before = :erlang.system_info(:atom_count)

    assert HLC.from_string("1:2@a:" <> name) == {:error, :invalid_format}

    assert HLC.from_string("1:2@t:" <> Base.url_encode64(etf_of_new_atom, padding: false)) ==
             {:error, :invalid_format}

    assert HLC.from_string(
             "1:2@t:" <> Base.url_encode64(<<131, 104, 1>> <> etf_of_new_atom, padding: false)
           ) ==
             {:error, :invalid_format}

    # Any string, and any tail after a well-formed clock, is a clock or
    # `{:error, :invalid_format}` (StreamData: a failure shrinks).
    junk_strings(fn input ->
      assert match?({:ok, %HLC{}}, HLC.from_string(input)) or
               HLC.from_string(input) == {:error, :invalid_format}
    end)

    assert :erlang.system_info(:atom_count) == before
    assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
  end

  # `fun` on random strings: junk, and junk after a well-formed clock,
  # raw and hex-encoded.
  defp junk_strings(fun) do
    check all(
            junk <- binary(max_length: 40),
            tag <- member_of(["a", "s", "t", "x", ""]),
            max_runs: 300
          ) do
      Enum.each([junk, "1:2@#{tag}:" <> junk, "1:2@#{tag}:" <> Base.encode16(junk)], fun)
    end
  end
end
