defmodule Vsmcp.CRDT.Types.GCounterTest do
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Types.GCounter

  doctest GCounter

  test "convergence contract: increments of 5 and 3 exchanged as deltas give 8 on both" do
    {c1, d1} = GCounter.increment(GCounter.new(:node1), 5)
    {c2, d2} = GCounter.increment(GCounter.new(:node2), 3)

    m1 = GCounter.merge(c1, d2)
    m2 = GCounter.merge(c2, d1)

    assert GCounter.value(m1) == 8
    assert GCounter.value(m2) == 8
    assert GCounter.equal?(m1, m2)
    assert m1.node_id == :node1
    assert m2.node_id == :node2
  end

  test "increment/1 adds one and the delta carries the whole new entry" do
    c = GCounter.new("a")
    {c, _} = GCounter.increment(c)
    {c, d} = GCounter.increment(c)
    assert GCounter.value(c) == 2
    assert GCounter.value(d) == 2
    assert GCounter.equal?(GCounter.merge(GCounter.new("b"), d), c)
  end

  test "merge is pointwise max: commutative, associative, idempotent" do
    {a, _} = GCounter.increment(GCounter.new(:a), 4)
    {b, _} = GCounter.increment(GCounter.new(:b), 7)
    {c, _} = GCounter.increment(GCounter.merge(GCounter.new(:c), a), 2)

    assert GCounter.equal?(GCounter.merge(a, b), GCounter.merge(b, a))

    assert GCounter.equal?(
             GCounter.merge(GCounter.merge(a, b), c),
             GCounter.merge(a, GCounter.merge(b, c))
           )

    assert GCounter.equal?(GCounter.merge(a, a), a)
    assert GCounter.value(GCounter.merge(GCounter.merge(a, b), c)) == 13
    # Merging an older state changes nothing.
    assert GCounter.value(GCounter.merge(c, a)) == 6
  end

  test "merging a delta equals merging the state it came from" do
    {base, _} = GCounter.increment(GCounter.new(:x), 3)
    {newer, delta} = GCounter.increment(base, 9)
    {other, _} = GCounter.increment(GCounter.new(:y), 1)

    assert GCounter.equal?(GCounter.merge(other, delta), GCounter.merge(other, newer))
  end

  for n <- [0, -1, -1000] do
    test "mutate with {:increment, #{n}} returns the counter unchanged and an empty delta" do
      {c, _} = GCounter.increment(GCounter.new(:node1), 5)
      {same, delta} = GCounter.mutate(c, {:increment, unquote(n)})

      assert same == c
      assert GCounter.value(delta) == 0
      assert GCounter.causal_context(delta) == %{}
      assert GCounter.equal?(GCounter.merge(c, delta), c)
      assert GCounter.equal?(delta, GCounter.new(:anyone))
    end
  end

  test "mutate with a positive increment" do
    {c, d} = GCounter.mutate(GCounter.new(:n), {:increment, 12})
    assert GCounter.value(c) == 12
    assert GCounter.value(d) == 12
  end

  test "increment/2 demands a positive integer" do
    c = GCounter.new(:n)

    for bad <- [0, -3, 1.5, "1", nil] do
      assert_raise ArgumentError, ~r/positive integer/, fn -> GCounter.increment(c, bad) end
    end
  end

  test "equal? compares replicated state, not the holder's node id" do
    {a, da} = GCounter.increment(GCounter.new(:node1), 2)
    {b, db} = GCounter.increment(GCounter.new(:node2), 3)
    r1 = a |> GCounter.merge(db)
    r2 = b |> GCounter.merge(da)
    r3 = GCounter.new(:observer) |> GCounter.merge(db) |> GCounter.merge(da)

    assert GCounter.equal?(r1, r2)
    assert GCounter.equal?(r2, r3)
    assert GCounter.equal?(GCounter.new(:p), GCounter.new(:q))
    refute GCounter.equal?(a, b)
  end

  test "causal_context maps each replica to its count" do
    {a, _} = GCounter.increment(GCounter.new(:node1), 5)
    {b, _} = GCounter.increment(GCounter.new({:node, 2}), 3)
    assert GCounter.causal_context(GCounter.merge(a, b)) == %{:node1 => 5, {:node, 2} => 3}
    assert GCounter.causal_context(GCounter.new(:x)) == %{}
  end

  test "values beyond 2^64 are exact and an entry overflow is an error" do
    max = 0xFFFF_FFFF_FFFF_FFFF
    {a, _} = GCounter.increment(GCounter.new(:a), max)
    {b, _} = GCounter.increment(GCounter.new(:b), max)
    assert GCounter.value(GCounter.merge(a, b)) == 2 * max

    assert GCounter.increment(a, 1) == {:error, {:invalid_amount, 1}}
    assert GCounter.increment(GCounter.new(:c), max + 1) == {:error, {:invalid_amount, max + 1}}
  end
end
