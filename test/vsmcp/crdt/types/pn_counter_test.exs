defmodule Vsmcp.CRDT.Types.PNCounterTest do
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Types.PNCounter

  test "increments and decrements converge across replicas" do
    {a, da1} = PNCounter.increment(PNCounter.new(:node1), 10)
    {a, da2} = PNCounter.decrement(a, 4)
    {b, db} = PNCounter.decrement(PNCounter.new(:node2), 7)

    ma = PNCounter.merge(a, db)
    mb = b |> PNCounter.merge(da2) |> PNCounter.merge(da1)

    assert PNCounter.value(ma) == -1
    assert PNCounter.value(mb) == -1
    assert PNCounter.equal?(ma, mb)
  end

  test "increment/1 and decrement/1 move by one" do
    {c, _} = PNCounter.increment(PNCounter.new(:n))
    {c, _} = PNCounter.increment(c)
    {c, d} = PNCounter.decrement(c)
    assert PNCounter.value(c) == 1
    # The delta of a decrement holds only the changed negative entry.
    assert PNCounter.value(d) == -1
  end

  test "deltas may arrive in any order and more than once" do
    c = PNCounter.new(:src)
    {c, d1} = PNCounter.increment(c, 3)
    {c, d2} = PNCounter.decrement(c, 1)
    {c, d3} = PNCounter.increment(c, 5)

    for order <- [[d1, d2, d3], [d3, d2, d1], [d2, d3, d1, d3, d1]] do
      r = Enum.reduce(order, PNCounter.new(:dst), &PNCounter.merge(&2, &1))
      assert PNCounter.value(r) == 7
      assert PNCounter.equal?(r, c)
    end
  end

  for op <- [:increment, :decrement] do
    test "mutate with {#{op}, 0} returns the counter unchanged and an empty delta" do
      {c, _} = PNCounter.increment(PNCounter.new(:node1), 5)
      {same, delta} = PNCounter.mutate(c, {unquote(op), 0})
      assert same == c
      assert PNCounter.value(delta) == 0
      assert PNCounter.equal?(PNCounter.merge(c, delta), c)
    end
  end

  # One rule with Vsmcp.CRDT.ContextStore: a negative amount counts the
  # other way.
  test "mutate with a negative amount counts the other way" do
    {c, _} = PNCounter.increment(PNCounter.new(:node1), 5)
    {c2, delta} = PNCounter.mutate(c, {:increment, -3})
    assert PNCounter.value(c2) == 2
    assert PNCounter.value(PNCounter.merge(c, delta)) == 2
    {c3, _} = PNCounter.mutate(c2, {:decrement, -10})
    assert PNCounter.value(c3) == 12
  end

  test "increment/2 and decrement/2 demand a positive integer" do
    c = PNCounter.new(:n)
    assert_raise ArgumentError, ~r/positive integer/, fn -> PNCounter.increment(c, 0) end
    assert_raise ArgumentError, ~r/positive integer/, fn -> PNCounter.decrement(c, -1) end
    assert_raise ArgumentError, ~r/positive integer/, fn -> PNCounter.decrement(c, :one) end
  end

  test "causal_context counts each replica's operations" do
    {a, _} = PNCounter.increment(PNCounter.new(:a), 2)
    {a, _} = PNCounter.decrement(a, 3)
    {b, _} = PNCounter.decrement(PNCounter.new(:b), 1)
    assert PNCounter.causal_context(PNCounter.merge(a, b)) == %{a: 5, b: 1}
  end

  test "values far below zero are exact" do
    max = 0xFFFF_FFFF_FFFF_FFFF
    {a, _} = PNCounter.decrement(PNCounter.new(:a), max)
    {b, _} = PNCounter.decrement(PNCounter.new(:b), max)
    assert PNCounter.value(PNCounter.merge(a, b)) == -2 * max
  end

  test "a G-Counter is not a PN-Counter" do
    g = Vsmcp.CRDT.Types.GCounter.new(:n)
    assert PNCounter.merge(PNCounter.new(:n), g) == {:error, :type_mismatch}

    assert PNCounter.merge(PNCounter.new(:n), %PNCounter{node_id: :n, state: g.state}) ==
             {:error, :type_mismatch}
  end
end
