defmodule Vsmcp.CRDT.Types.ORSetTest do
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Types.ORSet

  test "convergence contract: a remove concurrent with an add wins on both replicas" do
    {set1, _d1} = ORSet.add(ORSet.new(:node1), "item")
    {set2, delta2} = ORSet.add(ORSet.new(:node2), "item")
    {set1_removed, delta_remove} = ORSet.remove(set1, "item")

    m1 = ORSet.merge(set1_removed, delta2)
    m2 = ORSet.merge(set2, delta_remove)

    assert MapSet.size(ORSet.value(m1)) == 0
    assert MapSet.size(ORSet.value(m2)) == 0
    refute ORSet.member?(m1, "item")
    assert ORSet.equal?(m1, m2)
  end

  test "remove-wins: an add that observed the remove makes the element present again" do
    {s, _} = ORSet.add(ORSet.new(:a), :x)
    {s, _} = ORSet.remove(s, :x)
    refute ORSet.member?(s, :x)
    {s, d} = ORSet.add(s, :x)
    assert ORSet.member?(s, :x)

    # A replica that saw only the remove learns the re-add from its delta.
    {other, _} = ORSet.add(ORSet.new(:b), :y)
    assert ORSet.value(ORSet.merge(other, d)) == MapSet.new([:x, :y])
  end

  test "add-wins: an add concurrent with a remove survives" do
    {s1, d1} = ORSet.add(ORSet.new(:node1, policy: :add_wins), "item")
    s2 = ORSet.merge(ORSet.new(:node2, policy: :add_wins), d1)
    {s1, d_remove} = ORSet.remove(s1, "item")
    {s2, d_add} = ORSet.add(s2, "item")

    m1 = ORSet.merge(s1, d_add)
    m2 = ORSet.merge(s2, d_remove)

    assert ORSet.value(m1) == MapSet.new(["item"])
    assert ORSet.value(m2) == MapSet.new(["item"])
    assert ORSet.equal?(m1, m2)
  end

  test "add-wins: a remove that observed every add removes" do
    {s, _} = ORSet.add(ORSet.new(:n, policy: :add_wins), 1)
    {s, _} = ORSet.add(s, 2)
    {s, _} = ORSet.remove(s, 1)
    assert ORSet.value(s) == MapSet.new([2])
  end

  test "new/2 validates its options" do
    assert ORSet.value(ORSet.new(:n, policy: :remove_wins)) == MapSet.new()
    assert ORSet.value(ORSet.new(:n, [])) == MapSet.new()

    for bad <- [[policy: :bogus], [colour: :red], [policy: "add_wins"]] do
      assert_raise ArgumentError, fn -> ORSet.new(:n, bad) end
    end
  end

  test "the two flavours do not merge" do
    rw = ORSet.new(:n)
    aw = ORSet.new(:n, policy: :add_wins)
    assert ORSet.merge(rw, aw) == {:error, :type_mismatch}
    assert ORSet.merge(aw, rw) == {:error, :type_mismatch}
  end

  test "elements of every kind round-trip exactly" do
    elements = [
      :atom,
      nil,
      true,
      "string",
      <<0, 255, 1>>,
      "",
      0,
      -1,
      42,
      0xFFFF_FFFF_FFFF_FFFF,
      -0x1_0000_0000_0000_0000_0000,
      2 ** 300,
      1.5,
      -0.0,
      {},
      {:tuple, 1, "two"},
      [],
      [1, [2, [3]]],
      [1 | 2],
      %{},
      %{"k" => {1.0}, a: %{b: [1, 2]}},
      Map.new(1..40, &{&1, &1 * 2}),
      self(),
      make_ref(),
      <<1::3>>,
      &Kernel.is_atom/1
    ]

    set =
      Enum.reduce(elements, ORSet.new(:n), fn e, s ->
        {s, _} = ORSet.add(s, e)
        s
      end)

    value = ORSet.value(set)
    assert MapSet.size(value) == length(elements)

    for e <- elements do
      assert MapSet.member?(value, e), "#{inspect(e)} missing from #{inspect(value)}"
      assert ORSet.member?(set, e)
    end

    # Elements follow ===, not ==.
    {s, _} = ORSet.add(ORSet.new(:n), 1)
    refute ORSet.member?(s, 1.0)
  end

  test "a remove delta of an element never seen is harmless" do
    {s, d} = ORSet.remove(ORSet.new(:a), "ghost")
    assert ORSet.value(s) == MapSet.new()
    {other, _} = ORSet.add(ORSet.new(:b), "real")
    assert ORSet.value(ORSet.merge(other, d)) == MapSet.new(["real"])
  end

  test "merge is commutative, associative and idempotent on random histories" do
    for policy <- [:remove_wins, :add_wins], _round <- 1..20 do
      replicas = for n <- [:r1, :r2, :r3], do: ORSet.new(n, policy: policy)

      [a, b, c] =
        Enum.map(replicas, fn r ->
          Enum.reduce(1..8, r, fn _, s ->
            op = Enum.random([:add, :add, :remove])
            {s, _} = ORSet.mutate(s, {op, Enum.random(1..4)})
            s
          end)
        end)

      assert ORSet.equal?(ORSet.merge(a, b), ORSet.merge(b, a))
      assert ORSet.equal?(ORSet.merge(ORSet.merge(a, b), c), ORSet.merge(a, ORSet.merge(b, c)))
      assert ORSet.equal?(ORSet.merge(a, a), a)
    end
  end

  test "replicas exchanging deltas in different orders converge" do
    for policy <- [:remove_wins, :add_wins], _round <- 1..20 do
      # Each replica performs local ops and records its deltas.
      {finals, deltas} =
        for n <- [:r1, :r2, :r3] do
          Enum.reduce(1..6, {ORSet.new(n, policy: policy), []}, fn _, {s, ds} ->
            {s, d} = ORSet.mutate(s, {Enum.random([:add, :remove]), Enum.random([:a, :b, :c])})
            {s, [d | ds]}
          end)
        end
        |> Enum.unzip()

      all = List.flatten(deltas)

      merged =
        for s <- finals do
          Enum.reduce(Enum.shuffle(all), s, &ORSet.merge(&2, &1))
        end

      [first | rest] = merged
      for m <- rest, do: assert(ORSet.equal?(first, m))

      # Delivering the deltas equals delivering the full states.
      by_state = Enum.reduce(finals, ORSet.new(:observer, policy: policy), &ORSet.merge(&2, &1))
      assert ORSet.equal?(first, by_state)
    end
  end

  test "equal? compares replicated state, not the holder's node id" do
    {a, da} = ORSet.add(ORSet.new(:node1), "x")
    b = ORSet.merge(ORSet.new(:node2), da)
    c = ORSet.merge(ORSet.new(:node3), a)
    assert ORSet.equal?(a, b)
    assert ORSet.equal?(b, c)
    assert ORSet.equal?(ORSet.new(:p), ORSet.new(:q))
  end

  test "causal_context is a version vector plus the out-of-order dots" do
    {s, d1} = ORSet.add(ORSet.new(:node1), "a")
    {_s, d2} = ORSet.add(s, "b")
    {s3, d3} = ORSet.add(ORSet.new("node2"), "c")

    assert ORSet.causal_context(ORSet.new(:x)) == %{vv: %{}, cloud: []}
    assert ORSet.causal_context(s3) == %{vv: %{"node2" => 1}, cloud: []}

    # Seeing node1's second event without its first leaves a gap.
    gap = ORSet.merge(s3, d2)
    assert ORSet.causal_context(gap) == %{vv: %{"node2" => 1}, cloud: [{:node1, 2}]}
    full = ORSet.merge(gap, d1)
    assert ORSet.causal_context(full) == %{vv: %{"node2" => 1, :node1 => 2}, cloud: []}
    assert ORSet.causal_context(d3) == %{vv: %{"node2" => 1}, cloud: []}
  end

  test "sets of a few thousand elements and states above the dirty threshold work" do
    s =
      Enum.reduce(1..2_000, ORSet.new(:n), fn i, s ->
        {s, _} = ORSet.add(s, i)
        s
      end)

    assert MapSet.size(ORSet.value(s)) == 2_000

    big = :binary.copy("x", 70_000)
    {s, d} = ORSet.add(s, big)
    assert byte_size(s.state) > 64 * 1024
    assert ORSet.member?(s, big)
    assert ORSet.member?(ORSet.merge(ORSet.new(:m), d), big)
    assert MapSet.size(ORSet.value(s)) == 2_001
    assert ORSet.equal?(ORSet.merge(s, s), s)
    {s, _} = ORSet.remove(s, big)
    refute ORSet.member?(s, big)
    assert %{vv: %{n: 2_002}} = ORSet.causal_context(s)
  end
end
