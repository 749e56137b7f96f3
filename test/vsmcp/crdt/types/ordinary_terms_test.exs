defmodule Vsmcp.CRDT.Types.OrdinaryTermsTest do
  @moduledoc "Every CRDT value is an ordinary immutable term."
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Types.{GCounter, LWWRegister, ORSet, PNCounter}

  # {module, op producing a change, how to read the value}
  @types [
    {GCounter, {:increment, 3}},
    {PNCounter, {:decrement, 2}},
    {ORSet, {:add, {"element", 1}}},
    {LWWRegister, {:set, %{"value" => [1, 2]}}}
  ]

  for {mod, op} <- @types do
    describe inspect(mod) do
      setup do
        old = unquote(mod).new(:node1)
        {new, delta} = unquote(mod).mutate(old, unquote(Macro.escape(op)))
        %{mod: unquote(mod), old: old, new: new, delta: delta}
      end

      test "the old version stays valid after a new one is derived", %{
        mod: mod,
        old: old,
        new: new
      } do
        old_value = mod.value(mod.new(:node1))
        assert mod.value(old) == old_value
        refute mod.value(new) == old_value
        # Deriving again from the old version gives the same result.
        {again, _} = mod.mutate(old, unquote(Macro.escape(op)))
        assert mod.value(again) == mod.value(new)
        assert mod.value(old) == old_value
      end

      test "round-trips through term_to_binary", %{mod: mod, new: new, delta: delta} do
        for v <- [new, delta] do
          back = v |> :erlang.term_to_binary() |> :erlang.binary_to_term()
          assert back == v
          assert mod.equal?(back, v)
          assert mod.value(back) == mod.value(v)
        end
      end

      test "stores in ETS and reads back", %{mod: mod, new: new} do
        table = :ets.new(:crdt_values, [:set, :private])
        :ets.insert(table, {:key, new})
        [{:key, back}] = :ets.lookup(table, :key)
        assert back == new
        assert mod.value(back) == mod.value(new)
        {_, _} = mod.mutate(back, unquote(Macro.escape(op)))
      end

      test "is sent to another process, which can use it", %{mod: mod, new: new, delta: delta} do
        parent = self()

        pid =
          spawn_link(fn ->
            receive do
              {:crdt, v, d} ->
                merged = mod.merge(mod.new(:node2), d)
                send(parent, {:reply, mod.value(v), mod.equal?(merged, v)})
            end
          end)

        send(pid, {:crdt, new, delta})
        assert_receive {:reply, value, true}
        assert value == mod.value(new)
      end

      test "values compare with == and sort", %{new: new, old: old} do
        assert new == new
        assert new != old
        assert length(Enum.sort([new, old, new])) == 3
      end
    end
  end
end
