defmodule Vsmcp.CRDT.HostileTerms do
  @moduledoc """
  StreamData generators of hostile input for the property tests, so that a
  failure shrinks to a small counterexample.

  * `term/0` - any term: integers (small and bignums), floats, binaries,
    bitstrings, atoms, pids, references and funs as leaves; lists, improper
    lists, tuples and maps (odd keys included) around them. Unlike
    `StreamData.term/0` it never makes a new atom: atoms come from
    `atoms/0`, so running the tests does not fill the atom table (and
    code that must not create atoms can be checked).
  * `data/0` - `term/0` without funs: the terms the store's codec keeps
    (elements, register values, ids and node ids).
  * `nasty/0` - one of `nasty_terms/0`: oversized binaries, terms nested
    100_000 levels deep, improper lists, funs, extreme floats and integers,
    forged structs, option lists at and past their bounds.
  * `hostile/0` - mostly `term/0`, sometimes `nasty/0`.
  * `options/0` - keyword lists of the real option keys of
    `Vsmcp.CRDT.ContextStore.start_link/1` (and `:supervisor_name`) with
    hostile values, or any hostile term. Paths in them are made safe with
    `safe_paths/2` before use.
  * `element/0` - small set elements and register values (integers,
    tuples, short strings), for model-based tests of valid input.
  """

  import Bitwise
  import StreamData, except: [term: 0]

  alias Vsmcp.CRDT.HLC
  alias Vsmcp.CRDT.TestHelpers
  alias Vsmcp.CRDT.Types.GCounter

  # `:data_dir` and `:dets_file` are left out: only `options/0` makes
  # them, with paths `safe_paths/2` then moves into a test's directory.
  @atoms [nil, true, false, :ok, :error, :all, :infinity, :a, :b] ++
           [:increment, :decrement, :add, :remove, :set, :member?, :value] ++
           [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register, :bag] ++
           [:return, :page_size, :name, :node_id, :storage_opts, :sync_opts, :topic] ++
           [:enabled, :memory_limit, :max_value_bytes, :durability, :strict, :relaxed] ++
           [:max_offset, :policy, :add_wins, :remove_wins, :supervisor_name, :EXIT] ++
           [:"", :"with space", :"#{String.duplicate("a", 255)}"]

  @store_keys [:node_id, :name, :storage_opts, :durability, :sync_opts, :ets_name, :dets_name]
  @storage_keys [:data_dir, :dets_file, :memory_limit, :ets_limit, :access_threshold] ++
                  [
                    :decay_interval,
                    :max_value_bytes,
                    :flush_interval,
                    :cache_bytes,
                    :memory_budget
                  ] ++
                  [:durability]
  @sync_keys [:enabled, :topic, :transport, :pubsub, :transport_opts, :tick_interval] ++
               [:heartbeat_interval, :down_after, :retransmit_interval, :max_log_bytes] ++
               [:collect_after, :member_expiry, :wire_versions]

  @doc "The atoms the generators use (all exist before any test runs)."
  def atoms, do: @atoms

  @doc "A hostile term: mostly `term/0`, one time in five `nasty/0`."
  def hostile, do: frequency([{4, term()}, {1, nasty()}])

  @doc "Any term (see the moduledoc), no new atoms."
  def term, do: tree_of(leaf([:self, :dead_pid, :ref, :fun, :capture]))

  @doc "`term/0` without funs: terms the store's codec keeps."
  def data, do: tree_of(leaf([:self, :dead_pid, :ref]))

  defp tree_of(leaf) do
    tree(leaf, fn child ->
      one_of([
        list_of(child, max_length: 4),
        list_of(child, max_length: 3) |> map(&List.to_tuple/1),
        map_of(child, child, max_length: 3),
        nonempty_improper_list_of(child, child)
      ])
    end)
    |> resize(12)
  end

  defp leaf(runtime) do
    one_of([
      member_of(@atoms),
      integer(),
      integer(-(1 <<< 70)..(1 <<< 70)),
      float(),
      binary(max_length: 24),
      bitstring(max_length: 20),
      string(:printable, max_length: 12),
      member_of([0, -1, 1 <<< 64, -(1 <<< 63) - 1, 1 <<< 1000]),
      member_of([-0.0, 1.0e308, -1.0e308, 5.0e-324, 0.5]),
      member_of(runtime) |> map(&runtime_leaf/1)
    ])
  end

  # Terms that cannot be written as literals: made when drawn.
  defp runtime_leaf(:self), do: self()
  defp runtime_leaf(:dead_pid), do: dead_pid()
  defp runtime_leaf(:ref), do: make_ref()
  defp runtime_leaf(:fun), do: fn -> :ok end
  defp runtime_leaf(:capture), do: &Enum.map/2

  @doc "One of `nasty_terms/0`."
  def nasty, do: member_of(nasty_terms())

  @doc """
  Terms chosen to hurt: oversized, deeply nested, improper, not data at
  all, and values just past the bounds of the API.
  """
  def nasty_terms do
    big = :binary.copy("x", 2 <<< 20)

    [
      big,
      {:id, big},
      [big],
      :binary.copy(<<0>>, 17 <<< 20),
      TestHelpers.nested(300),
      TestHelpers.nested(100_000),
      Enum.reduce(1..100_000, :leaf, &[&1 | &2]),
      [1 | 2],
      [:a, :b | "c"],
      ["a", ?b | "c"],
      ~c"abc",
      <<1::3>>,
      "",
      [],
      {},
      %{},
      fn -> :ok end,
      &Enum.map/2,
      self(),
      dead_pid(),
      make_ref(),
      hd(Port.list()),
      1 <<< 64,
      (1 <<< 64) - 1,
      1 <<< 1000,
      -(1 <<< 1000),
      -0.0,
      1.0e308,
      5.0e-324,
      :infinity,
      :"#{String.duplicate("a", 255)}",
      %{{1, 2} => 3, [1] => 2, 1.0 => 1, 1 => 2, self() => :pid, %{} => []},
      %{__struct__: :not_a_module},
      %{__struct__: GCounter, state: "x"},
      %GCounter{node_id: :n, state: <<0xC7, 1, 1, 0>>},
      %HLC{timestamp: -1, counter: 0, node_id: :n},
      %HLC{timestamp: 1 <<< 64, counter: 1 <<< 32, node_id: :n},
      {:increment, 1 <<< 64},
      {:decrement, -1},
      {:add, big},
      {:set, TestHelpers.nested(100_000)},
      {:increment},
      {:add, 1, 2},
      [return: :ok],
      [page_size: 0],
      [page_size: 100_001],
      [page_size: 3],
      [max_offset: -1],
      [policy: :both],
      [storage_opts: :x],
      [sync_opts: [topic: ""]],
      [sync_opts: [topic: :binary.copy("t", 256)]]
    ]
  end

  @doc """
  Keyword lists of the store's (and the supervisor's) option keys with
  hostile values, nested the way `start_link/1` nests them; or any hostile
  term. Pass the result through `safe_paths/2` before starting anything.
  """
  def options do
    value = hostile()

    storage =
      list_of(tuple({member_of(@storage_keys), one_of([value, positive_integer()])}),
        max_length: 4
      )

    sync = list_of(tuple({member_of(@sync_keys), value}), max_length: 3)

    one_of([
      value,
      list_of(
        one_of([
          tuple({member_of(@store_keys), value}),
          tuple({constant(:storage_opts), storage}),
          tuple({constant(:sync_opts), sync}),
          tuple({constant(:supervisor_name), member_of(@atoms)})
        ]),
        max_length: 4
      )
    ])
  end

  @doc """
  `opts` with every `:data_dir` or `:dets_file` value that could name a
  path (a binary or a list) replaced by a fresh path below `dir`, so a
  random option never writes outside the test's directory.
  """
  def safe_paths(opts, dir) when is_list(opts) do
    if proper_list?(opts) do
      Enum.map(opts, fn
        {key, value}
        when key in [:data_dir, :dets_file] and (is_binary(value) or is_list(value)) ->
          {key, Path.join(dir, "p#{System.unique_integer([:positive])}")}

        {key, value} ->
          {key, safe_paths(value, dir)}

        other ->
          other
      end)
    else
      opts
    end
  end

  def safe_paths(other, _dir), do: other

  @doc "Small set elements and register values."
  def element do
    one_of([
      integer(1..3_500),
      tuple({constant(:t), integer(1..50)}),
      integer(1..50) |> map(&"s#{&1}")
    ])
  end

  @doc "The pid of a process that has exited."
  def dead_pid do
    {pid, ref} = spawn_monitor(fn -> :ok end)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> pid
    end
  end

  defp proper_list?(list), do: is_list(list) and length_or_nil(list) != nil

  defp length_or_nil(list) do
    length(list)
  rescue
    ArgumentError -> nil
  end
end
