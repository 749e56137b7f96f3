defmodule Vsmcp.CRDT.Types.EncodedState do
  # Internal: hidden from the documentation.
  #
  # The shared plumbing of the CRDT type modules: argument checks, the call
  # into `Vsmcp.CRDT.Native`, and the choice of scheduler.
  #
  # Each type module is a struct `%Type{node_id: term, state: binary}` (see
  # `Vsmcp.CRDT.Behaviour`) and passes its own module name and the CRDT kinds
  # it accepts (`[:or_set, :aw_set]` for `ORSet`); the NIF refuses a state of
  # any other kind with `:type_mismatch`, so a forged or mixed-up struct can
  # never be read as another type.
  #
  # Cost: one NIF call per function, O(size of the state). Measured on a
  # 2-core VM (minimum of 200 runs), per call:
  #
  # | state                        | bytes  | mutate | merge delta | value  | equal? |
  # |------------------------------|--------|--------|-------------|--------|--------|
  # | OR-Set, 100 small elements   | 1 KB   | 24 µs  | 23 µs       | 28 µs  | 74 µs  |
  # | OR-Set, 1,000 small elements | 12 KB  | 0.23 ms| 0.23 ms     | 0.32 ms| 0.82 ms|
  # | OR-Set, 6,000 small elements | 77 KB  | 2.0 ms | 2.0 ms      | 2.1 ms | 12 ms  |
  # | G-Counter, 3,000 replicas    | 21 KB  | 1.0 ms | -           | -      | -      |
  # | G-Counter, 1 replica         | 15 B   | 1 µs   | -           | -      | -      |
  #
  # That is 20-80 ns per state byte, so calls whose state bytes (both states
  # for `merge` and `equal?`) exceed 8 KiB go to the `_dirty` twin of the
  # NIF, which runs on a dirty CPU scheduler: a normal scheduler is not held
  # for more than about a millisecond, and the few microseconds of dirty
  # scheduling are small against the work at that size.
  #
  # Internal: the type modules are the API.
  @moduledoc false

  alias Vsmcp.CRDT.Native

  @typedoc "A type module's struct: `%Type{node_id: term, state: binary}`."
  @type crdt :: %{:__struct__ => module(), :node_id => term(), :state => binary()}
  @type kinds :: [atom()]

  @dirty_threshold 8 * 1024

  @doc """
  An empty CRDT of `kind` held by `node_id`, as a `module` struct.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, GCounter, ORSet}
      iex> counter = EncodedState.new(GCounter, :g_counter, :node1)
      iex> {counter.__struct__, counter.node_id, GCounter.value(counter)}
      {GCounter, :node1, 0}
      iex> EncodedState.new(ORSet, :aw_set, :node1) |> ORSet.value()
      MapSet.new([])
  """
  @spec new(module(), atom(), term()) :: crdt
  def new(module, kind, node_id) do
    {:ok, state} = Native.crdt_new(kind)
    struct!(module, node_id: node_id, state: state)
  end

  @doc """
  Apply `op` to `crdt`: `{crdt, delta}` or `{:error, reason}`. A struct
  of another module is `:type_mismatch`, and so is a state of a kind not
  in `kinds`, whatever struct holds it.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, GCounter, ORSet}
      iex> counter = GCounter.new(:node1)
      iex> {counter, delta} = EncodedState.mutate(counter, GCounter, [:g_counter], {:increment, 3})
      iex> {GCounter.value(counter), GCounter.value(delta)}
      {3, 3}
      iex> EncodedState.mutate(ORSet.new(:node1), GCounter, [:g_counter], {:increment, 1})
      {:error, :type_mismatch}
      iex> forged = %GCounter{node_id: :node1, state: ORSet.new(:node1).state}
      iex> EncodedState.mutate(forged, GCounter, [:g_counter], {:increment, 1})
      {:error, :type_mismatch}
  """
  @spec mutate(term(), module(), kinds, term()) :: {crdt, crdt} | {:error, term()}
  def mutate(crdt, module, kinds, op) do
    with {:ok, %{state: state} = crdt} <- check(crdt, module),
         nif = pick(byte_size(state), &Native.crdt_mutate/4, &Native.crdt_mutate_dirty/4),
         {:ok, {new_state, delta}} <- nif.(kinds, state, crdt.node_id, op) do
      {%{crdt | state: new_state}, %{crdt | state: delta}}
    end
  end

  @doc """
  `{crdt, empty_delta}` for an operation that changes nothing (`zero_op`
  has amount 0): the NIF still validates `crdt`, and `crdt` itself is
  returned untouched.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, GCounter}
      iex> {counter, _} = GCounter.increment(GCounter.new(:node1), 2)
      iex> {same, delta} = EncodedState.unchanged(counter, GCounter, [:g_counter], {:increment, 0})
      iex> {same === counter, GCounter.value(delta)}
      {true, 0}
      iex> junk = %GCounter{node_id: :node1, state: "junk"}
      iex> EncodedState.unchanged(junk, GCounter, [:g_counter], {:increment, 0})
      {:error, {:invalid_encoding, "missing header"}}
  """
  @spec unchanged(term(), module(), kinds, term()) :: {crdt, crdt} | {:error, term()}
  def unchanged(crdt, module, kinds, zero_op) do
    case mutate(crdt, module, kinds, zero_op) do
      {:error, _} = error -> error
      {_same, delta} -> {crdt, delta}
    end
  end

  @doc """
  `a` joined with the state or delta `b`, keeping `a`'s node id; or
  `{:error, reason}`.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, GCounter, ORSet}
      iex> {a, _} = GCounter.increment(GCounter.new(:node1), 2)
      iex> {_b, delta} = GCounter.increment(GCounter.new(:node2), 5)
      iex> merged = EncodedState.merge(a, delta, GCounter, [:g_counter])
      iex> {merged.node_id, GCounter.value(merged)}
      {:node1, 7}
      iex> EncodedState.merge(a, ORSet.new(:node2), GCounter, [:g_counter])
      {:error, :type_mismatch}
  """
  @spec merge(term(), term(), module(), kinds) :: crdt | {:error, term()}
  def merge(a, b, module, kinds) do
    with {:ok, a} <- check(a, module),
         {:ok, b} <- check(b, module),
         size = byte_size(a.state) + byte_size(b.state),
         nif = pick(size, &Native.crdt_merge/3, &Native.crdt_merge_dirty/3),
         {:ok, state} <- nif.(kinds, a.state, b.state) do
      %{a | state: state}
    end
  end

  @doc """
  The decoded value; raises `ArgumentError` on an invalid CRDT.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, ORSet}
      iex> {set, _} = ORSet.add(ORSet.new(:node1), "a")
      iex> EncodedState.value(set, ORSet, [:or_set, :aw_set])
      ["a"]
      iex> EncodedState.value(:not_a_crdt, ORSet, [:or_set, :aw_set])
      ** (ArgumentError) Vsmcp.CRDT.Types.ORSet.value: expected a %Vsmcp.CRDT.Types.ORSet{} with a binary state, got: :not_a_crdt
  """
  @spec value(term(), module(), kinds) :: term()
  def value(crdt, module, kinds) do
    %{state: state} = check!(crdt, module, :value)
    nif = pick(byte_size(state), &Native.crdt_value/2, &Native.crdt_value_dirty/2)
    unwrap!(nif.(kinds, state), module, :value)
  end

  @doc """
  Membership of `elem`; raises `ArgumentError` on an invalid CRDT.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, ORSet}
      iex> {set, _} = ORSet.add(ORSet.new(:node1), "a")
      iex> for e <- ["a", "b"], do: EncodedState.member?(set, e, ORSet, [:or_set])
      [true, false]
  """
  @spec member?(term(), term(), module(), kinds) :: boolean()
  def member?(crdt, elem, module, kinds) do
    %{state: state} = check!(crdt, module, :member?)
    nif = pick(byte_size(state), &Native.crdt_member/3, &Native.crdt_member_dirty/3)
    unwrap!(nif.(kinds, state, elem), module, :member?)
  end

  @doc """
  Equality of replicated state; raises `ArgumentError` on an invalid CRDT.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, GCounter}
      iex> {a, delta} = GCounter.increment(GCounter.new(:node1), 1)
      iex> b = GCounter.merge(GCounter.new(:node2), delta)
      iex> EncodedState.equal?(a, b, GCounter, [:g_counter])
      true
      iex> EncodedState.equal?(a, GCounter.new(:node1), GCounter, [:g_counter])
      false
  """
  @spec equal?(term(), term(), module(), kinds) :: boolean()
  def equal?(a, b, module, kinds) do
    %{state: sa} = check!(a, module, :equal?)
    %{state: sb} = check!(b, module, :equal?)
    nif = pick(byte_size(sa) + byte_size(sb), &Native.crdt_equal/3, &Native.crdt_equal_dirty/3)
    unwrap!(nif.(kinds, sa, sb), module, :equal?)
  end

  @doc """
  The causal context map; raises `ArgumentError` on an invalid CRDT.

      iex> alias Vsmcp.CRDT.Types.{EncodedState, ORSet}
      iex> {set, _} = ORSet.add(ORSet.new(:node1), :x)
      iex> EncodedState.causal_context(set, ORSet, [:or_set])
      %{vv: %{node1: 1}, cloud: []}
  """
  @spec causal_context(term(), module(), kinds) :: map()
  def causal_context(crdt, module, kinds) do
    %{state: state} = check!(crdt, module, :causal_context)

    nif =
      pick(byte_size(state), &Native.crdt_causal_context/2, &Native.crdt_causal_context_dirty/2)

    unwrap!(nif.(kinds, state), module, :causal_context)
  end

  # The NIF to call for a state of `size` bytes.
  defp pick(size, _nif, dirty_nif) when size > @dirty_threshold, do: dirty_nif
  defp pick(_size, nif, _dirty_nif), do: nif

  defp unwrap!({:ok, result}, _module, _fun), do: result

  defp unwrap!({:error, reason}, module, fun) do
    raise ArgumentError,
          "#{inspect(module)}.#{fun}: the state is not a valid #{inspect(module)}: " <>
            inspect(reason)
  end

  # A map posing as the struct must have every field (`crdt.node_id` is read).
  defp check(%{__struct__: module, state: state, node_id: _} = crdt, module)
       when is_binary(state),
       do: {:ok, crdt}

  defp check(%{__struct__: module}, module), do: {:error, :invalid_argument}
  defp check(%{__struct__: _other}, _module), do: {:error, :type_mismatch}
  defp check(_other, _module), do: {:error, :invalid_argument}

  defp check!(crdt, module, fun) do
    case check(crdt, module) do
      {:ok, crdt} ->
        crdt

      {:error, _} ->
        raise ArgumentError,
              "#{inspect(module)}.#{fun}: expected a %#{inspect(module)}{} with a binary state, got: " <>
                inspect(crdt, limit: 8, printable_limit: 64)
    end
  end
end
