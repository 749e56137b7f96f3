defmodule Vsmcp.CRDT.Types.BadInputTest do
  @moduledoc """
  Wrong types, structs of another CRDT, malformed state bytes and bad
  operations give `{:error, reason}` (mutators, merge) or `ArgumentError`
  (queries), never a crash.
  """
  use ExUnit.Case, async: true
  use ExUnitProperties

  alias Vsmcp.CRDT.HostileTerms
  alias Vsmcp.CRDT.Types.{GCounter, LWWRegister, ORSet, PNCounter}

  @modules [GCounter, PNCounter, ORSet, LWWRegister]
  @good_ops %{
    GCounter => {:increment, 2},
    PNCounter => {:decrement, 2},
    ORSet => {:add, "e"},
    LWWRegister => {:set, "v"}
  }

  # The state bytes of a few valid values of every type, to corrupt.
  defp valid_states(mod) do
    op = @good_ops[mod]
    {a, d} = mod.mutate(mod.new(:node1), op)
    {b, _} = mod.mutate(mod.merge(mod.new({:node, 2}), a), op)
    [mod.new(:x), a, d, b] ++ if(mod == ORSet, do: [ORSet.new(:y, policy: :add_wins)], else: [])
  end

  # Runs every function of `mod` on `crdt`; each must return normally,
  # return {:error, _} or raise ArgumentError.
  defp exercise(mod, crdt) do
    good = mod.new(:good)

    results = [
      safely(fn -> mod.value(crdt) end),
      safely(fn -> mod.equal?(crdt, good) end),
      safely(fn -> mod.equal?(good, crdt) end),
      safely(fn -> mod.causal_context(crdt) end),
      safely(fn -> mod.merge(good, crdt) end),
      safely(fn -> mod.merge(crdt, good) end),
      safely(fn -> mod.mutate(crdt, @good_ops[mod]) end)
    ]

    extra =
      case mod do
        ORSet ->
          [safely(fn -> ORSet.member?(crdt, "e") end), safely(fn -> ORSet.remove(crdt, "e") end)]

        LWWRegister ->
          [safely(fn -> LWWRegister.get(crdt) end)]

        _ ->
          []
      end

    results ++ extra
  end

  defp safely(fun) do
    case fun.() do
      {:error, _} -> :error
      _ -> :ok
    end
  rescue
    e in ArgumentError -> {:raised, e.message}
  end

  defp all_rejected?(results), do: Enum.all?(results, &(&1 != :ok))

  test "random binaries as state are rejected by every function" do
    for mod <- @modules do
      check all(bytes <- binary(max_length: 63), max_runs: 300) do
        crdt = %{mod.new(:n) | state: bytes}
        results = exercise(mod, crdt)

        assert all_rejected?(results),
               "#{inspect(mod)} accepted #{inspect(bytes)}: #{inspect(results)}"
      end
    end
  end

  test "random bodies behind a valid header never crash" do
    for mod <- @modules do
      <<header::binary-size(3), _::binary>> = mod.new(:n).state

      check all(body <- binary(min_length: 1, max_length: 40), max_runs: 300) do
        exercise(mod, %{mod.new(:n) | state: header <> body})
      end
    end
  end

  test "bit-flipped and truncated valid states never crash" do
    for mod <- @modules, crdt <- valid_states(mod) do
      state = crdt.state
      bits = bit_size(state)

      for i <- 0..(bits - 1) do
        <<pre::bitstring-size(i), bit::1, post::bitstring>> = state
        exercise(mod, %{crdt | state: <<pre::bitstring, 1 - bit::1, post::bitstring>>})
      end

      for n <- 0..(byte_size(state) - 1) do
        assert all_rejected?(exercise(mod, %{crdt | state: binary_part(state, 0, n)}))
      end

      assert all_rejected?(exercise(mod, %{crdt | state: state <> <<0>>}))
    end
  end

  test "an unknown format version is reported as such" do
    <<m, _v, rest::binary>> = GCounter.new(:n).state

    assert GCounter.merge(GCounter.new(:n), %GCounter{node_id: :n, state: <<m, 99, rest::binary>>}) ==
             {:error, :unsupported_version}
  end

  test "random terms in place of a CRDT are rejected" do
    for mod <- @modules,
        term <- [nil, %{}, %{state: "x"}, %{mod.new(:n) | state: 123}] do
      assert all_rejected?(exercise(mod, term)), "#{inspect(mod)} accepted #{inspect(term)}"
    end

    for mod <- @modules do
      check all(term <- HostileTerms.term(), max_runs: 200) do
        assert all_rejected?(exercise(mod, term)), "#{inspect(mod)} accepted #{inspect(term)}"
      end
    end
  end

  test "a struct of another CRDT is a type mismatch" do
    for mod <- @modules, other <- @modules, other != mod do
      theirs = other.new(:n)
      assert mod.merge(mod.new(:n), theirs) == {:error, :type_mismatch}
      assert mod.merge(theirs, mod.new(:n)) == {:error, :type_mismatch}
      assert mod.mutate(theirs, @good_ops[mod]) == {:error, :type_mismatch}
      assert_raise ArgumentError, ~r/expected a %#{inspect(mod)}\{\}/, fn -> mod.value(theirs) end
      assert_raise ArgumentError, fn -> mod.equal?(mod.new(:n), theirs) end
      assert_raise ArgumentError, fn -> mod.causal_context(theirs) end

      # The right struct holding another kind's state is refused too.
      forged = %{mod.new(:n) | state: theirs.state}
      assert mod.merge(mod.new(:n), forged) == {:error, :type_mismatch}
      assert mod.mutate(forged, @good_ops[mod]) == {:error, :type_mismatch}
      assert_raise ArgumentError, ~r/type_mismatch/, fn -> mod.value(forged) end
    end
  end

  test "a struct of the right type with a non-binary state is an invalid argument" do
    for mod <- @modules, state <- [nil, 123, ~c"list", {:state}] do
      forged = %{mod.new(:n) | state: state}
      assert mod.merge(mod.new(:n), forged) == {:error, :invalid_argument}
      assert mod.mutate(forged, @good_ops[mod]) == {:error, :invalid_argument}
      assert_raise ArgumentError, ~r/with a binary state/, fn -> mod.value(forged) end
    end
  end

  test "wrong operations are errors" do
    for mod <- @modules,
        op <- [
          :increment,
          {:increment},
          {:add, 1, 2},
          "add",
          {"add", 1},
          {:frobnicate, 1},
          {:decrement, 1.5}
        ] do
      assert {:error, reason} = mod.mutate(mod.new(:n), op), "#{inspect(mod)} #{inspect(op)}"

      assert reason in [:invalid_argument, :unsupported_operation] or
               reason == {:invalid_amount, 1.5}
    end

    for {mod, op} <- [
          {GCounter, {:add, 1}},
          {GCounter, {:decrement, 1}},
          {PNCounter, {:set, 1}},
          {ORSet, {:increment, 1}},
          {LWWRegister, {:remove, 1}}
        ] do
      assert mod.mutate(mod.new(:n), op) == {:error, :unsupported_operation}
    end

    for amount <- ["1", 1.0, :one, [1]] do
      assert GCounter.mutate(GCounter.new(:n), {:increment, amount}) ==
               {:error, {:invalid_amount, amount}}
    end
  end

  test "terms nested too deeply to encode are refused" do
    deep = Enum.reduce(1..1_000, :leaf, &{&1, &2})
    assert ORSet.add(ORSet.new(:n), deep) == {:error, :invalid_argument}
    assert LWWRegister.set(LWWRegister.new(:n), deep) == {:error, :invalid_argument}
    assert GCounter.increment(GCounter.new(deep), 1) == {:error, :invalid_argument}
  end

  test "random terms as elements, values and node ids work" do
    check all(term <- HostileTerms.data(), max_runs: 100) do
      {s, d} = ORSet.add(ORSet.new(term), term)
      assert ORSet.member?(s, term)
      assert ORSet.value(ORSet.merge(ORSet.new(:other), d)) == MapSet.new([term])

      {r, _} = LWWRegister.set(LWWRegister.new(term), term)
      assert LWWRegister.get(r) === term
      assert %{node_id: node} = LWWRegister.causal_context(r)
      assert node === term
    end
  end
end
