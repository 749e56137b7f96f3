defmodule Vsmcp.CRDT.HostileTermsTest do
  @moduledoc """
  Random terms given to every public function of the public modules
  (issue 16, "Bad input"): `Vsmcp.CRDT.ContextStore`, the four types,
  `Vsmcp.CRDT.HLC`, `Vsmcp.CRDT.Supervisor`, `Vsmcp.CRDT.ContextStore.Options`,
  `Vsmcp.CRDT.Storage.Location` and `Vsmcp.CRDT.Storage.DetsImport`.

  The functions come from each module's `__info__(:functions)`, minus
  `@excluded` (each with its reason), so a function added later is covered
  without editing this file. Every argument is drawn by StreamData (so a
  failure shrinks) from `Vsmcp.CRDT.HostileTerms.hostile/0` (random and
  nasty terms) or from values that mean something to the module (the test
  store, ids that exist, valid operations and options), so calls reach past
  the argument checks too.

  Each call must give a documented answer: a success value of the
  function's shape, `{:error, reason}`, or an `ArgumentError` or
  `FunctionClauseError` raised in the caller (also `Vsmcp.CRDT.Error` from
  the `!` functions, and the exit `stream_crdts/2` documents). After every
  call the store process and its sync peer are the same processes, ids no
  call names (`@witnesses`) hold their values, and when the call failed the
  ids it may name (`@targets`) hold theirs too: an error changes nothing.
  `HLC.from_string/1` must not create atoms.

  The module runs alone (`async: false`): it changes the working directory
  and `TMPDIR` to its own directory, so that options naming relative paths
  or no path (an ephemeral store) never write outside it.
  """
  use ExUnit.Case, async: false
  use ExUnitProperties

  import Bitwise
  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.{ContextStore, HLC, HostileTerms}
  alias Vsmcp.CRDT.ContextStore.Options
  alias Vsmcp.CRDT.Storage.{DetsImport, Location}
  alias Vsmcp.CRDT.Types.{GCounter, LWWRegister, ORSet, PNCounter}

  @types [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]
  @targets for t <- @types, do: {:target, t}
  @witnesses for t <- @types, do: {:witness, t}

  @struct "made by defstruct: `%Module{}` and `struct!/2` are Kernel's, not this library's"

  # Functions not given random terms, and why.
  @excluded %{
    GCounter => %{{:__struct__, 0} => @struct, {:__struct__, 1} => @struct},
    PNCounter => %{{:__struct__, 0} => @struct, {:__struct__, 1} => @struct},
    ORSet => %{{:__struct__, 0} => @struct, {:__struct__, 1} => @struct},
    LWWRegister => %{{:__struct__, 0} => @struct, {:__struct__, 1} => @struct},
    HLC => %{{:__struct__, 0} => @struct, {:__struct__, 1} => @struct},
    ContextStore => %{
      {:stop, 1} => "stops the store; its bad arguments have their own test below",
      {:stop, 2} => "stops the store; its bad arguments have their own test below",
      {:stop, 3} => "stops the store; its bad arguments have their own test below",
      {:inject_write_failure, 2} =>
        "test-only fault injection (@doc false): makes every later write fail, on purpose",
      {:inject_clock_skew, 1} =>
        "test-only fault injection (@doc false): skews every store's clock in this VM, on purpose"
    },
    Vsmcp.CRDT.Supervisor => %{
      {:init, 1} =>
        "the Supervisor callback, run by the supervisor process on start_link/1's options"
    }
  }

  @pure [GCounter, PNCounter, ORSet, LWWRegister, HLC]
  @setup [Vsmcp.CRDT.Supervisor, Options, Location, DetsImport]

  setup_all do
    root =
      real_path(
        Path.join(System.tmp_dir!(), "hostile_terms_#{System.unique_integer([:positive])}")
      )

    File.mkdir_p!(root)
    cwd = File.cwd!()
    tmpdir = System.get_env("TMPDIR")
    File.cd!(root)
    System.put_env("TMPDIR", root)

    on_exit(fn ->
      File.cd!(cwd)
      if tmpdir, do: System.put_env("TMPDIR", tmpdir), else: System.delete_env("TMPDIR")
      File.rm_rf(root)
    end)

    %{root: root}
  end

  setup %{root: root} do
    topic = "hostile-terms-#{System.unique_integer([:positive])}"

    store =
      start_store!(
        node_id: :hostile,
        storage_opts: [data_dir: Path.join(root, "store_#{topic}"), max_value_bytes: 1 <<< 20],
        sync_opts: [topic: topic]
      )

    {:ok, peer} = GenServer.call(store, :peer)

    for ids <- [@targets, @witnesses], {_, type} = id <- ids do
      :ok = ContextStore.create(store, id, type)
      {:ok, _} = ContextStore.update(store, id, valid_op(type))
    end

    %{store: store, peer: peer, root: root, witnessed: snapshot(store, @witnesses)}
  end

  defp valid_op(:g_counter), do: {:increment, 3}
  defp valid_op(:pn_counter), do: {:decrement, 2}
  defp valid_op(:lww_register), do: {:set, "v"}
  defp valid_op(_set), do: {:add, "e"}

  defp snapshot(store, ids), do: Map.new(ids, &{&1, ContextStore.get(store, &1)})

  # ---------------------------------------------------------------------------
  # The functions

  defp functions(module) do
    excluded = Map.get(@excluded, module, %{})
    for fa <- module.__info__(:functions), not Map.has_key?(excluded, fa), do: fa
  end

  test "every excluded function exists (the list stays honest)" do
    for {module, excluded} <- @excluded, fa <- Map.keys(excluded) do
      assert fa in module.__info__(:functions), "#{inspect(module)} #{inspect(fa)}"
    end
  end

  test "Vsmcp.CRDT.ContextStore: random terms to every function", ctx do
    args = arg(store_values(ctx))

    for {fun, arity} <- functions(ContextStore) do
      check all(args <- fixed_list(List.duplicate(args, arity)), max_runs: runs(fun)) do
        before = snapshot(ctx.store, @targets)
        args = safe_args(ContextStore, fun, args, ctx.root)
        result = call(ContextStore, fun, args)

        assert documented?(ContextStore, fun, result),
               "#{fun}/#{arity} #{inspect(args, limit: 8)} -> #{inspect(result, limit: 8)}"

        assert_store_intact(ctx)

        unless succeeded?(result) do
          assert snapshot(ctx.store, @targets) == before,
                 "#{fun}/#{arity} failed but changed a value: #{inspect(result, limit: 8)}"
        end

        flush_mailbox()
      end
    end
  end

  for module <- @pure ++ @setup do
    test "#{inspect(module)}: random terms to every function", ctx do
      module = unquote(module)
      args = arg(values(module, ctx))

      for {fun, arity} <- functions(module) do
        check all(args <- fixed_list(List.duplicate(args, arity)), max_runs: runs(fun)) do
          args = safe_args(module, fun, args, ctx.root)
          result = call(module, fun, args)

          assert documented?(module, fun, result),
                 "#{inspect(module)}.#{fun}/#{arity} #{inspect(args, limit: 8)} -> " <>
                   inspect(result, limit: 8)

          # Called again once the code it runs is loaded (loading a
          # module makes atoms): decoding must make none.
          if {module, fun} == {HLC, :from_string} do
            atoms = :erlang.system_info(:atom_count)
            assert call(module, fun, args) == result
            assert :erlang.system_info(:atom_count) == atoms, "from_string made an atom"
          end

          assert_store_intact(ctx)
        end
      end
    end
  end

  test "stop/3 with a timeout that is not a number of ms raises, the store stays", ctx do
    for timeout <- [-1, :soon, 1.5, nil, "5"] do
      assert_raise FunctionClauseError, fn -> ContextStore.stop(ctx.store, :normal, timeout) end
    end

    # Sent as a call, the same junk is refused by the store itself.
    assert {:error, :unknown_call} = GenServer.call(ctx.store, {:close, :soon})
    assert_store_intact(ctx)
  end

  # Fewer runs where a valid draw starts or copies a store.
  defp runs(fun) when fun in [:start_link, :start, :backup, :to_native, :resolve], do: 8
  defp runs(_fun), do: 20

  # An argument: mostly hostile, otherwise a value the module knows.
  defp arg(values), do: frequency([{3, HostileTerms.hostile()}, {2, member_of(values)}])

  defp store_values(%{store: store, peer: peer}) do
    [store, store, store, peer, {:global, :nope}, self()] ++
      @targets ++
      @types ++
      [{:increment, 3}, {:decrement, 2}, {:add, "e"}, {:remove, "e"}, {:set, "w"}, "e", 5] ++
      [[return: :ok], [page_size: 2], :all, [], 0, 1_000]
  end

  defp values(module, _ctx) when module in [GCounter, PNCounter, ORSet, LWWRegister] do
    crdts =
      for m <- [GCounter, PNCounter, ORSet, LWWRegister] do
        {changed, _delta} = m.mutate(m.new(:n), pure_op(m))
        [m.new(:n), changed]
      end

    List.flatten(crdts) ++
      [{:increment, 2}, {:decrement, 2}, {:add, "e"}, {:remove, "e"}, {:set, 1}, "e", 1, 7] ++
      [[policy: :add_wins], [policy: :remove_wins], []]
  end

  defp values(HLC, _ctx) do
    clock = HLC.new(:n)

    [clock, HLC.tick(clock), HLC.new("other"), HLC.to_string(clock)] ++
      ["1:0@a:n", "1:0@s:x%20y", "1:0@i:-4", "1:0@t:g2gCYQFhAg", "1:0@a:no_such_atom_here"] ++
      [[max_offset: 10], [max_offset: 0], []]
  end

  defp values(_setup_module, %{root: root}) do
    [[], [storage_opts: [data_dir: Path.join(root, "x")]]] ++
      Enum.take(HostileTerms.options(), 20)
  end

  defp pure_op(GCounter), do: {:increment, 2}
  defp pure_op(PNCounter), do: {:decrement, 2}
  defp pure_op(ORSet), do: {:add, "e"}
  defp pure_op(LWWRegister), do: {:set, "v"}

  # Paths a random draw could name are moved into this test's directory.
  defp safe_args(ContextStore, :backup, [store, dir], root) do
    [
      store,
      if(chardata?(dir), do: Path.join(root, "b#{System.unique_integer([:positive])}"), else: dir)
    ]
  end

  defp safe_args(_module, _fun, args, root),
    do: Enum.map(args, &HostileTerms.safe_paths(&1, root))

  defp chardata?(term) do
    is_binary(IO.chardata_to_string(term))
  rescue
    _ -> false
  end

  # ---------------------------------------------------------------------------
  # Calling and judging

  @starts [
    {ContextStore, :start_link},
    {ContextStore, :start},
    {Vsmcp.CRDT.Supervisor, :start_link}
  ]

  defp call(module, fun, args) do
    if {module, fun} in @starts,
      do: isolated(fn -> outcome(module, fun, args) end),
      else: outcome(module, fun, args)
  end

  defp outcome(module, fun, args) do
    case apply(module, fun, args) do
      # A stream is only a recipe: run a little of it.
      stream when fun == :stream_crdts and is_function(stream, 2) ->
        {:returned, Enum.take(stream, 3)}

      {:ok, pid} = started when is_pid(pid) ->
        stop_started(module, fun, started)

      other ->
        {:returned, other}
    end
  rescue
    e -> {:raised, e}
  catch
    :exit, reason -> {:exit, reason}
  end

  defp stop_started(module, fun, {:ok, pid} = started) do
    if {module, fun} in @starts do
      if module == ContextStore, do: ContextStore.stop(pid), else: Supervisor.stop(pid)
    end

    {:returned, started}
  end

  # A start links the caller to what it starts: run it in a process of its
  # own that traps exits, so that a start failing after the spawn does not
  # take the test down.
  defp isolated(fun) do
    parent = self()

    {pid, ref} =
      spawn_monitor(fn ->
        Process.flag(:trap_exit, true)
        send(parent, {:isolated, self(), fun.()})
      end)

    receive do
      {:isolated, ^pid, result} ->
        Process.demonitor(ref, [:flush])
        result

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:crashed, reason}
    end
  end

  defp succeeded?({:returned, {:error, _}}), do: false
  defp succeeded?({:returned, _}), do: true
  defp succeeded?(_), do: false

  defp documented?(_module, _fun, {:raised, %ArgumentError{}}), do: true
  defp documented?(_module, _fun, {:raised, %FunctionClauseError{}}), do: true

  defp documented?(ContextStore, fun, {:raised, %Vsmcp.CRDT.Error{}})
       when fun in [:get!, :update!],
       do: true

  defp documented?(
         ContextStore,
         :stream_crdts,
         {:exit, {_reason, {ContextStore, :stream_crdts, _}}}
       ),
       do: true

  defp documented?(module, fun, {:returned, value}), do: result?(module, fun, value)
  defp documented?(_module, _fun, _other), do: false

  defp result?(_module, _fun, {:error, _}), do: true
  defp result?(ContextStore, fun, _value) when fun in [:get!, :update!], do: true

  defp result?(ContextStore, fun, value) when fun in [:list_crdts, :stream_crdts],
    do: is_list(value)

  defp result?(ContextStore, fun, value) when fun in [:stats, :info, :sync_info],
    do: is_map(value)

  defp result?(ContextStore, :child_spec, value), do: is_map(value)
  defp result?(ContextStore, _fun, value), do: value == :ok or match?({:ok, _}, value)

  defp result?(module, fun, value)
       when module in [GCounter, PNCounter, ORSet, LWWRegister] and
              fun in [:mutate, :add, :remove, :set, :increment, :decrement],
       do: match?({%^module{}, %^module{}}, value)

  defp result?(module, fun, value)
       when module in [GCounter, PNCounter, ORSet, LWWRegister] and fun in [:new, :merge],
       do: is_struct(value, module)

  # Queries: any value (their failures raise ArgumentError).
  defp result?(module, _fun, _value) when module in [GCounter, PNCounter, ORSet, LWWRegister],
    do: true

  defp result?(HLC, :from_string, value), do: match?({:ok, %HLC{}}, value)
  defp result?(HLC, :receive_event, value), do: is_struct(value, HLC)
  defp result?(HLC, fun, value) when fun in [:new, :tick], do: is_struct(value, HLC)
  defp result?(HLC, :compare, value), do: value in [:lt, :eq, :gt]

  defp result?(HLC, fun, value) when fun in [:before?, :after?, :concurrent?],
    do: is_boolean(value)

  defp result?(HLC, :to_string, value), do: is_binary(value)
  defp result?(Vsmcp.CRDT.Supervisor, :start_link, value), do: match?({:ok, _}, value)
  defp result?(Vsmcp.CRDT.Supervisor, fun, value) when fun in [:store_options], do: is_list(value)
  defp result?(Vsmcp.CRDT.Supervisor, :child_spec, value), do: is_map(value)
  defp result?(Options, :decay_interval, value), do: is_integer(value) and value >= 0
  defp result?(Options, :default_topic, value), do: is_binary(value)
  # Any term comes back, with a secret it holds hidden.
  defp result?(Options, :hide_secret, _value), do: true
  defp result?(DetsImport, :dets_header?, value), do: is_boolean(value)
  defp result?(_module, _fun, value), do: value == :ok or match?({:ok, _}, value)

  # ---------------------------------------------------------------------------

  defp assert_store_intact(%{store: store, peer: peer, witnessed: witnessed}) do
    assert Process.alive?(store)
    assert {:ok, ^peer} = GenServer.call(store, :peer)
    assert snapshot(store, @witnesses) == witnessed
  end

  defp flush_mailbox do
    receive do
      _ -> flush_mailbox()
    after
      0 -> :ok
    end
  end
end
