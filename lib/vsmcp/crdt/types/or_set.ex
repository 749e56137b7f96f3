defmodule Vsmcp.CRDT.Types.ORSet do
  @moduledoc """
  Observed-remove set of arbitrary Erlang terms, as a delta-state dot store
  over a causal context (Almeida, Shoker, Baquero 2018, §7), in two
  flavours chosen at `new/2`:

  * **remove-wins** (the default): a remove concurrent with an add of the
    same element wins; an add that has observed the remove makes the
    element present again. This is what the convergence contract needs:
    two replicas add `"item"`, one removes it, and after exchanging deltas
    both are empty.
  * **add-wins** (`new(node_id, policy: :add_wins)`): the classic OR-Set;
    an add concurrent with a remove survives.

  No remove token lives forever: the next add or remove of the element
  that observes it drops it.

  Elements are compared by their canonical encoding, so they follow `===`
  (`1` and `1.0` are different elements), including bignums, floats,
  tuples, maps, lists and pids.

  A value is `%ORSet{node_id: term, state: binary}` as described in
  `Vsmcp.CRDT.Behaviour`. Cost: each call decodes and re-encodes the whole
  set, O(n) in the number of elements: about 0.2 ms per `add/2` at 1,000
  small elements (figures in `Vsmcp.CRDT.Behaviour`); states
  above 8 KiB run on a dirty scheduler. Keep large, hot sets in
  `Vsmcp.CRDT.ContextStore`. Merging sets of different flavours is
  `{:error, :type_mismatch}`. Errors follow `Vsmcp.CRDT.Behaviour`.

  Invariant: every element's presence is decided by its dots and the
  causal context alone, and the join (union of contexts, dots kept unless
  the other side has seen and dropped them) is commutative, associative
  and idempotent.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {a, delta_add} = ORSet.add(ORSet.new(:node1), "item")
      iex> b = ORSet.merge(ORSet.new(:node2), delta_add)
      iex> {_b, delta_remove} = ORSet.remove(b, "item")
      iex> ORSet.value(ORSet.merge(a, delta_remove))
      MapSet.new([])
  """

  @behaviour Vsmcp.CRDT.Behaviour

  alias Vsmcp.CRDT.Behaviour
  alias Vsmcp.CRDT.Types.EncodedState

  @enforce_keys [:node_id, :state]
  defstruct [:node_id, :state]

  @type t :: %__MODULE__{node_id: term(), state: binary()}
  @type op :: {:add, term()} | {:remove, term()}
  @type policy :: :remove_wins | :add_wins

  @kinds [:or_set, :aw_set]

  @doc """
  An empty remove-wins set held by replica `node_id`.

      iex> Vsmcp.CRDT.Types.ORSet.new(:node1) |> Vsmcp.CRDT.Types.ORSet.value()
      MapSet.new([])
  """
  @impl Behaviour
  @spec new(term()) :: t
  def new(node_id), do: new(node_id, [])

  @doc """
  An empty set held by `node_id`. Option `policy: :remove_wins` (default) or
  `:add_wins`; anything else raises `ArgumentError`.

  With add-wins, an add concurrent with a remove survives:

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {a, add1} = ORSet.add(ORSet.new(:node1, policy: :add_wins), :x)
      iex> b = ORSet.merge(ORSet.new(:node2, policy: :add_wins), add1)
      iex> {_b, remove} = ORSet.remove(b, :x)
      iex> {a, add2} = ORSet.add(a, :x)
      iex> a |> ORSet.merge(remove) |> ORSet.merge(add2) |> ORSet.member?(:x)
      true
  """
  @spec new(term(), [{:policy, policy}]) :: t
  def new(node_id, opts) when is_list(opts) do
    case Keyword.validate(opts, policy: :remove_wins) do
      {:ok, [policy: :remove_wins]} -> EncodedState.new(__MODULE__, :or_set, node_id)
      {:ok, [policy: :add_wins]} -> EncodedState.new(__MODULE__, :aw_set, node_id)
      _ -> raise ArgumentError, "#{inspect(__MODULE__)}.new/2: invalid options #{inspect(opts)}"
    end
  end

  @doc """
  Adds `element`; returns `{set, delta}`.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, delta} = ORSet.add(ORSet.new(:node1), {:task, 1})
      iex> {ORSet.value(set), ORSet.value(delta)}
      {MapSet.new([{:task, 1}]), MapSet.new([{:task, 1}])}
  """
  @spec add(t, term()) :: {t, t} | {:error, Behaviour.reason()}
  def add(set, element), do: mutate(set, {:add, element})

  @doc """
  Removes `element` (as far as this replica has observed it); returns `{set, delta}`.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, _} = ORSet.add(ORSet.new(:node1), "a")
      iex> {set, _} = ORSet.remove(set, "a")
      iex> ORSet.member?(set, "a")
      false
  """
  @spec remove(t, term()) :: {t, t} | {:error, Behaviour.reason()}
  def remove(set, element), do: mutate(set, {:remove, element})

  @doc """
  Applies `{:add, element}` or `{:remove, element}`.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, _} = ORSet.mutate(ORSet.new(:node1), {:add, 1})
      iex> ORSet.value(set)
      MapSet.new([1])
  """
  @impl Behaviour
  @spec mutate(t, op) :: {t, t} | {:error, Behaviour.reason()}
  def mutate(set, op), do: EncodedState.mutate(set, __MODULE__, @kinds, op)

  @doc """
  Joins a set state or delta into `set`, keeping `set`'s node id.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {a, _} = ORSet.add(ORSet.new(:node1), :x)
      iex> {b, _} = ORSet.add(ORSet.new(:node2), :y)
      iex> ORSet.value(ORSet.merge(a, b))
      MapSet.new([:x, :y])
  """
  @impl Behaviour
  @spec merge(t, t) :: t | {:error, Behaviour.reason()}
  def merge(set, other), do: EncodedState.merge(set, other, __MODULE__, @kinds)

  @doc """
  Whether `element` is present. Elements follow `===`:

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, _} = ORSet.add(ORSet.new(:node1), 1)
      iex> {ORSet.member?(set, 1), ORSet.member?(set, 1.0)}
      {true, false}
  """
  @spec member?(t, term()) :: boolean()
  def member?(set, element), do: EncodedState.member?(set, element, __MODULE__, @kinds)

  @doc """
  The present elements.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, _} = ORSet.add(ORSet.new(:node1), "a")
      iex> ORSet.value(set)
      MapSet.new(["a"])
  """
  @impl Behaviour
  @spec value(t) :: MapSet.t()
  def value(set), do: set |> EncodedState.value(__MODULE__, @kinds) |> MapSet.new()

  @doc """
  Whether both sets hold the same elements, dots and causal context.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {a, delta} = ORSet.add(ORSet.new(:node1), :x)
      iex> ORSet.equal?(a, ORSet.merge(ORSet.new(:node2), delta))
      true
  """
  @impl Behaviour
  @spec equal?(t, t) :: boolean()
  def equal?(a, b), do: EncodedState.equal?(a, b, __MODULE__, @kinds)

  @doc """
  `%{vv: %{node_id => n}, cloud: [{node_id, n}]}`: the version vector (all
  events `1..n` of each replica seen) and the events seen out of order.

      iex> alias Vsmcp.CRDT.Types.ORSet
      iex> {set, _} = ORSet.add(ORSet.new(:node1), :x)
      iex> {set, _} = ORSet.add(set, :y)
      iex> ORSet.causal_context(set)
      %{vv: %{node1: 2}, cloud: []}
  """
  @impl Behaviour
  @spec causal_context(t) :: %{
          vv: %{optional(term()) => pos_integer()},
          cloud: [{term(), pos_integer()}]
        }
  def causal_context(set), do: EncodedState.causal_context(set, __MODULE__, @kinds)
end
