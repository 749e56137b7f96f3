defmodule Vsmcp.CRDT.Types.LWWRegisterTest do
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Types.LWWRegister

  test "a new register reads nil and has an empty causal context" do
    r = LWWRegister.new(:node1)
    assert LWWRegister.get(r) == nil
    assert LWWRegister.value(r) == nil
    assert LWWRegister.causal_context(r) == %{}
  end

  test "set/2 writes and a later local write always wins" do
    {r, _} = LWWRegister.set(LWWRegister.new(:node1), "a")
    assert LWWRegister.get(r) == "a"

    r =
      Enum.reduce(1..50, r, fn i, r ->
        {r, _} = LWWRegister.set(r, i)
        r
      end)

    assert LWWRegister.get(r) == 50
  end

  test "a replica adopts a causally later write from its delta" do
    {r1, d1} = LWWRegister.set(LWWRegister.new(:node1), :first)
    r2 = LWWRegister.merge(LWWRegister.new(:node2), d1)
    {r2, d2} = LWWRegister.set(r2, :second)

    assert LWWRegister.get(LWWRegister.merge(r1, d2)) == :second
    assert LWWRegister.equal?(LWWRegister.merge(r1, d2), r2)
    # The stale delta does not roll it back.
    assert LWWRegister.get(LWWRegister.merge(r2, d1)) == :second
  end

  test "concurrent writes resolve to the same value on every replica" do
    for _ <- 1..20 do
      {r1, d1} = LWWRegister.set(LWWRegister.new(:node1), "from 1")
      {r2, d2} = LWWRegister.set(LWWRegister.new(:node2), "from 2")
      m1 = LWWRegister.merge(r1, d2)
      m2 = LWWRegister.merge(r2, d1)
      assert LWWRegister.get(m1) == LWWRegister.get(m2)
      assert LWWRegister.equal?(m1, m2)
    end
  end

  test "causal_context names the winning write's clock and writer" do
    {r, _} = LWWRegister.set(LWWRegister.new({:node, 7}), 1)
    assert %{timestamp: ts, counter: c, node_id: {:node, 7}} = LWWRegister.causal_context(r)
    assert is_integer(ts) and ts > 0 and is_integer(c)

    {r, _} = LWWRegister.set(r, 2)
    %{timestamp: ts2, counter: c2} = LWWRegister.causal_context(r)
    assert {ts2, c2} > {ts, c}
  end

  test "values of every kind round-trip exactly, nil included" do
    values = [
      nil,
      :atom,
      "string",
      <<0, 1, 2>>,
      -7,
      2 ** 200,
      -(2 ** 70),
      3.25,
      {:a, {:b, "c"}},
      [1, :two, "three"],
      %{"str" => {}, nested: %{map: [1, 2, 3]}},
      self(),
      make_ref(),
      {:error, :looks_like_an_error}
    ]

    for v <- values do
      {r, d} = LWWRegister.set(LWWRegister.new(:n), v)
      assert LWWRegister.get(r) === v
      assert LWWRegister.get(LWWRegister.merge(LWWRegister.new(:m), d)) === v
    end

    # Writing nil over a value is a write like any other.
    {r, _} = LWWRegister.set(LWWRegister.new(:n), 1)
    {r, _} = LWWRegister.set(r, nil)
    assert LWWRegister.get(r) == nil
  end

  test "equal? ignores the holder's node id" do
    {r1, d1} = LWWRegister.set(LWWRegister.new(:node1), "v")
    r2 = LWWRegister.merge(LWWRegister.new(:node2), d1)
    assert LWWRegister.equal?(r1, r2)
    assert LWWRegister.equal?(LWWRegister.new(:a), LWWRegister.new(:b))
    refute LWWRegister.equal?(r1, LWWRegister.new(:node1))
  end
end
