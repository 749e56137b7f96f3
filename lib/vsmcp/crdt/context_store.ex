defmodule Vsmcp.CRDT.ContextStore do
  @moduledoc """
  A store of named CRDTs: the drop-in replacement of the application's
  `Vsmcp.CRDT.ContextStore`, with its engine in Rust.

      {:ok, store} = ContextStore.start_link(node_id: :n1, storage_opts: [data_dir: "data/crdt"])
      :ok = ContextStore.create(store, :page_views, :g_counter)
      {:ok, 1} = ContextStore.increment(store, :page_views)
      {:ok, 6} = ContextStore.increment(store, :page_views, 5)

  Every function takes the store (a pid or registered name) as an optional
  first argument; without it, the application's default store registered as
  `Vsmcp.CRDT.ContextStore` (see `Vsmcp.CRDT.Supervisor`) is used.

  ## Types

  `:g_counter`, `:pn_counter`, `:or_set` (observed-remove, remove-wins),
  `:aw_set` (observed-remove, add-wins) and `:lww_register` (ordered by a
  hybrid logical clock). Ids, elements and values are any Erlang terms.

  ## Process model

  Reads and writes do not go through the store process's mailbox: the caller
  passes the store's pid to the NIF, which finds the native handle in its
  own registry (keyed by pid, so starting and stopping stores costs nothing
  VM-wide), so callers scale with cores. The NIF runs on the normal
  scheduler while the id is in memory (a few hundred nanoseconds) and the
  call is repeated on a dirty IO scheduler when it would block (a cold id,
  every write with `durability: :strict`, or O(n) work on an item larger
  than 64 KiB). A mutation repeated that way happens once, in the dirty
  call, so its reply is the value right after it. The store process, a
  `Vsmcp.CRDT.ContextStore.Server`, owns the store's lifecycle, its sync
  peer and its decay timer.

  A set in the hot tier keeps its built `MapSet` beside it, edited by each
  add and remove, so a reply copies it (about 10-50 ns per element, what
  sending it to another process costs) instead of building it (0.25-0.5 µs
  per element); such copies run on the normal scheduler up to 256 KiB.

  ## Naming the store

  The store argument is optional. A pid, `{:global, name}` and
  `{:via, module, name}` always mean a store (`{:error, :noproc}` when it
  is not running). A bare atom means a store when a store is registered
  under it; otherwise it is an id of the default store. So
  `increment(:views, 5)` adds 5 to `:views` of the default store unless a
  store is registered as `:views`.

  ## Options of `start_link/1`

  Every key, its type and default: `Vsmcp.CRDT.ContextStore.Options`.
  Unknown keys are refused (`{:error, {:invalid_option, key, value}}`),
  except the replaced store's `:ets_name` and `:dets_name`.

    * `:node_id` - this replica's id (default `node()`), any term.
    * `:name` - register the store under this name (only when given).
    * `:storage_opts` - `:data_dir` (the RocksDB directory), or the legacy
      `:dets_file` (see `Vsmcp.CRDT.Storage.Location`; the replaced
      application's DETS file there is imported at the first start, see
      `Vsmcp.CRDT.Storage.DetsImport`); `:memory_limit`
      (items kept decoded in the hot tier, default 10_000), `:ets_limit`
      (items kept encoded in the warm tier, default 100_000),
      `:access_threshold` (accesses before a warm item is promoted, default
      3), `:decay_interval` (ms between demotion passes, default 60_000),
      `:max_value_bytes` (largest id, element or value in encoded bytes,
      default 16 MiB; larger ones get `{:error, {:value_too_large, size,
      max}}`), `:flush_interval` (ms of group commit, default 5),
      `:memory_budget` (bytes the store sizes its fixed costs by, default
      256 MiB: a quarter for RocksDB's block cache and a quarter for its
      memtables; the rest is left to the hot and warm tiers and the VM; see
      the operations guide), `:cache_bytes` (RocksDB block
      cache, instead of a quarter of `:memory_budget`).
    * `:durability` - `:relaxed` (default: acknowledged writes reach the
      RocksDB write-ahead log within `:flush_interval` ms) or `:strict`
      (acknowledged only once in the log; survives a SIGKILL of the OS
      process).
    * `:sync_opts` - distributed sync (see `Vsmcp.CRDT.ContextStore.Options.sync_opts/1`
      for every key). A store syncs with the stores of other nodes that use
      the same `:topic`; the default store (`Vsmcp.CRDT.Supervisor`) syncs
      on a topic derived from its name, a store started here stays local
      unless given a `:topic`, and `enabled: false` keeps any store local.
      Deltas travel over Phoenix.PubSub when the host runs `Vsmcp.PubSub`
      (or `:pubsub`), else over OTP `:pg` (`:transport` forces one).

  ## Errors

  `{:error, :not_found}`, `{:error, :already_exists}`,
  `{:error, {:unknown_type, type}}`, `{:error, {:unsupported_operation, type, op}}`,
  `{:error, {:value_too_large, size, max}}`, `{:error, {:storage_error, message}}`
  (disk full, read-only directory; reads keep working), `{:error, :closed}`
  and `{:error, :noproc}` (no such store). `start_link/1` may also answer
  `{:error, {:dets_import_failed, path, reason}}` (see
  `Vsmcp.CRDT.Storage.DetsImport`).

  ## Cost and invariant

  Reads and writes of an id in memory cost a few hundred nanoseconds plus
  copying the reply (see "Process model"); a cold id costs a RocksDB point
  read. Each CRDT is a delta-state CRDT (Almeida, Shoker and Baquero 2018;
  Shapiro et al. 2011), so replicas that have received the same updates
  hold the same value whatever the order, duplication or batching of
  their delivery; tiers (hot, warm, on disk) change where an id lives,
  never its value.
  """

  alias Vsmcp.CRDT.ContextStore.Options
  alias Vsmcp.CRDT.ContextStore.Server
  alias Vsmcp.CRDT.Native
  alias Vsmcp.CRDT.Sync.Peer
  alias Vsmcp.CRDT.Telemetry

  @types [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]
  # How long a closing store retries writes the disk refused (`stop/3`).
  @close_deadline Server.close_deadline()

  @type store :: pid() | atom() | {:global, term()} | {:via, module(), term()}
  @type crdt_type :: :g_counter | :pn_counter | :or_set | :aw_set | :lww_register
  @type crdt_id :: term()
  @type operation ::
          {:increment, integer()}
          | {:decrement, integer()}
          | {:add, term()}
          | {:remove, term()}
          | {:set, term()}

  # ---------------------------------------------------------------------------
  # Lifecycle

  @doc """
  Start a store. See the moduledoc for options.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(node_id: :n1, storage_opts: [data_dir: dir])
      iex> Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      :ok
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: Server.start(opts, :link)

  @doc """
  Start a store not linked to the caller (see `start_link/1`).

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start(storage_opts: [data_dir: dir])
      iex> Process.alive?(s)
      true
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec start(keyword()) :: GenServer.on_start()
  def start(opts), do: Server.start(opts, :nolink)

  @doc false
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [Options.hide_secret(opts)]},
      type: :worker,
      shutdown: 10_000
    }
  end

  @doc """
  Stop a store, writing what is pending. Writes are retried until
  `timeout` ms (default 5_000) if the disk refuses them; if acknowledged
  writes are then still unwritten, an error is logged and the answer is
  `{:error, {:unflushed, ids, reason}}` with the number of ids whose writes
  were lost.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec stop(store(), term(), non_neg_integer()) ::
          :ok | {:error, {:unflushed, non_neg_integer(), String.t()}}
  def stop(store, reason \\ :normal, timeout \\ @close_deadline)
      when is_integer(timeout) and timeout >= 0 do
    result = GenServer.call(store, {:close, timeout}, :infinity)
    GenServer.stop(store, reason)
    result
  end

  # ---------------------------------------------------------------------------
  # Store lookup: the NIF resolves a pid to its handle.

  defp whereis(pid) when is_pid(pid), do: {:ok, pid}

  defp whereis(name) when is_atom(name) do
    case Process.whereis(name) do
      nil -> {:error, :noproc}
      pid -> {:ok, pid}
    end
  end

  defp whereis({:global, _} = name), do: whereis_name(name)
  defp whereis({:via, mod, _} = name) when is_atom(mod), do: whereis_name(name)
  defp whereis(_), do: {:error, :noproc}

  defp whereis_name(name) do
    case GenServer.whereis(name) do
      pid when is_pid(pid) -> {:ok, pid}
      _ -> {:error, :noproc}
    end
  end

  # Does `x` name a store (so that `increment(x, y)` means `(store, id)`)?
  # Pids and global/via names always do; a bare atom when a store is
  # registered under it.
  defp store?(x) when is_pid(x), do: true
  defp store?({:global, _}), do: true
  defp store?({:via, mod, _}) when is_atom(mod), do: true

  defp store?(x) when is_atom(x) do
    case Process.whereis(x) do
      nil -> false
      pid -> Native.store_registered(pid)
    end
  end

  defp store?(_), do: false

  # Call the plain NIF (normal scheduler); on `:dirty` repeat the same call
  # on its `_dirty` twin (dirty IO scheduler). A macro, so the hot path pays
  # no `apply/3`. Without the operation span: for a call that is one of
  # several NIF calls of one operation, inside that operation's span.
  defmacrop native_part(call) do
    {{:., meta, [mod, fun]}, cmeta, args} = call
    dirty = {{:., meta, [mod, :"#{fun}_dirty"]}, cmeta, args}

    quote do
      case unquote(call) do
        :dirty -> unquote(dirty)
        other -> other
      end
    end
  end

  # `native_part/1` inside the operation span (opt-in: one
  # `:persistent_term` read when off).
  defmacrop native(call) do
    {{:., _meta, [_mod, fun]}, _cmeta, args} = call

    op =
      case {fun, args} do
        {:store_update, [_pid, _id, operation | _]} ->
          quote(do: Telemetry.update_name(unquote(operation)))

        _ ->
          fun |> Atom.to_string() |> String.replace_prefix("store_", "") |> String.to_atom()
      end

    [pid | _] = args

    quote do
      if Telemetry.operations?() do
        Telemetry.operation(unquote(op), unquote(pid), fn -> native_part(unquote(call)) end)
      else
        native_part(unquote(call))
      end
    end
  end

  # ---------------------------------------------------------------------------
  # API

  @doc """
  Create `id` of `type`: `:ok`, `{:error, :already_exists}` or
  `{:error, {:unknown_type, type}}`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      :ok
      iex> Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      {:error, :already_exists}
      iex> Vsmcp.CRDT.ContextStore.create(s, :other, :bag)
      {:error, {:unknown_type, :bag}}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec create(store(), crdt_id(), crdt_type()) :: :ok | {:error, term()}
  def create(store \\ __MODULE__, id, type)

  def create(store, id, type) when type in @types do
    with {:ok, pid} <- whereis(store), do: native(Native.store_create(pid, id, type))
  end

  def create(_store, _id, type), do: {:error, {:unknown_type, type}}

  @doc """
  The value of `id`: an integer for counters, a `MapSet` for sets, the
  latest value (`nil` before the first `set/3`) for registers.

  A set of 256 elements or more reaches the calling process as a message,
  which `get/2` receives before it returns (the same holds for the value
  `add/3` and `remove/3` return): the value is copied into the caller once,
  and the caller's other messages are left as they were.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> Vsmcp.CRDT.ContextStore.get(s, :tags)
      {:ok, MapSet.new([])}
      iex> Vsmcp.CRDT.ContextStore.get(s, :missing)
      {:error, :not_found}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec get(store(), crdt_id()) :: {:ok, term()} | {:error, term()}
  def get(store \\ __MODULE__, id) do
    with {:ok, pid} <- whereis(store) do
      # One operation span, however many NIF calls the get takes.
      if Telemetry.operations?(),
        do: Telemetry.operation(:get, pid, fn -> get_from(pid, id) end),
        else: get_from(pid, id)
    end
  end

  # A large set answers `:by_message`: its value then comes as a message
  # (see "Replies by message" in native/vsmcp_crdt_nif/src/set_cache.rs).
  defp get_from(pid, id) do
    case native_part(Native.store_get(pid, id, :ask)) do
      :by_message -> get_by_message(pid, id)
      reply -> reply
    end
  end

  # The NIF sends a large set's reply tagged with `ref` and answers `ref`
  # (anything else is the reply itself). `make_ref/0` and the receive in one
  # function let the VM skip the messages queued before; kept apart from
  # the calls that need no reference, which then pay nothing for it.
  defp get_by_message(pid, id) do
    ref = make_ref()

    case native_part(Native.store_get(pid, id, ref)) do
      ^ref -> receive(do: ({^ref, reply} -> reply))
      reply -> reply
    end
  end

  @doc """
  The value of `id`, as `get/2` returns it in `{:ok, value}`; raises
  `Vsmcp.CRDT.Error` (with `get/2`'s error as its `:reason`) otherwise.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> Vsmcp.CRDT.ContextStore.get!(s, :views)
      0
      iex> Vsmcp.CRDT.ContextStore.get!(s, :missing)
      ** (Vsmcp.CRDT.Error) get of :missing failed: :not_found
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec get!(store(), crdt_id()) :: term()
  def get!(store \\ __MODULE__, id) do
    case get(store, id) do
      {:ok, value} -> value
      {:error, reason} -> raise Vsmcp.CRDT.Error, reason: reason, operation: :get, id: id
    end
  end

  @doc """
  Apply `operation` to `id` and return `{:ok, new_value}`.

  `{:increment, n}` (counters; a G-Counter ignores n <= 0),
  `{:decrement, n}` (PN-Counter), `{:add, e}` / `{:remove, e}` (sets),
  `{:set, v}` (registers). An operation that does not fit the type gives
  `{:error, {:unsupported_operation, type, operation}}`.

  With `return: :ok` in `opts` the call answers `:ok` instead of the new
  value: copying a large set's value into the caller costs O(n), the
  mutation O(1).

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :score, :pn_counter)
      iex> Vsmcp.CRDT.ContextStore.update(s, :score, {:decrement, 3})
      {:ok, -3}
      iex> Vsmcp.CRDT.ContextStore.update(s, :score, {:increment, 1}, return: :ok)
      :ok
      iex> Vsmcp.CRDT.ContextStore.update(s, :score, {:add, :x})
      {:error, {:unsupported_operation, :pn_counter, {:add, :x}}}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec update(store(), crdt_id(), operation(), keyword()) ::
          {:ok, term()} | :ok | {:error, term()}
  def update(store \\ __MODULE__, id, operation, opts \\ [])

  def update(store, id, operation, opts) do
    with {:ok, pid} <- whereis(store) do
      case {Keyword.get(opts, :return, :value), operation} do
        {:ok, _} -> native(Native.store_update(pid, id, operation, false))
        {_, {op, _}} when op in [:add, :remove] -> update_by_message(pid, id, operation)
        _ -> native(Native.store_update(pid, id, operation, true))
      end
    end
  end

  # A set's new value: as get_by_message/2 (an update cannot be asked
  # twice, so the reference is made for every value-returning set update).
  defp update_by_message(pid, id, operation) do
    ref = make_ref()

    case native(Native.store_update(pid, id, operation, ref)) do
      ^ref -> receive(do: ({^ref, reply} -> reply))
      reply -> reply
    end
  end

  @doc """
  As `update/4`, but returns the new value (or `:ok` with `return: :ok`)
  and raises `Vsmcp.CRDT.Error` (with `update/4`'s error as its
  `:reason`) instead of returning `{:error, reason}`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> Vsmcp.CRDT.ContextStore.update!(s, :tags, {:add, :elixir})
      MapSet.new([:elixir])
      iex> Vsmcp.CRDT.ContextStore.update!(s, :tags, {:increment, 1})
      ** (Vsmcp.CRDT.Error) update of :tags failed: {:unsupported_operation, :or_set, {:increment, 1}}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec update!(store(), crdt_id(), operation(), keyword()) :: term()
  def update!(store \\ __MODULE__, id, operation, opts \\ [])

  def update!(store, id, operation, opts) do
    case update(store, id, operation, opts) do
      {:ok, value} -> value
      :ok -> :ok
      {:error, reason} -> raise Vsmcp.CRDT.Error, reason: reason, operation: :update, id: id
    end
  end

  @doc """
  Increment a counter. `increment(store, id)` and `increment(id, amount)`
  (default store) are told apart by whether the first argument is a running
  store.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> Vsmcp.CRDT.ContextStore.increment(s, :views)
      {:ok, 1}
      iex> Vsmcp.CRDT.ContextStore.increment(s, :views, 5)
      {:ok, 6}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec increment(crdt_id()) :: {:ok, term()} | {:error, term()}
  @spec increment(store() | crdt_id(), crdt_id() | integer()) :: {:ok, term()} | {:error, term()}
  @spec increment(store(), crdt_id(), integer()) :: {:ok, term()} | {:error, term()}
  def increment(id), do: update(__MODULE__, id, {:increment, 1})

  def increment(store_or_id, id_or_amount) do
    if store?(store_or_id),
      do: update(store_or_id, id_or_amount, {:increment, 1}),
      else: update(__MODULE__, store_or_id, {:increment, id_or_amount})
  end

  def increment(store, id, amount), do: update(store, id, {:increment, amount})

  @doc """
  Decrement a PN-Counter (may go negative). Arguments as `increment/2`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :balance, :pn_counter)
      iex> Vsmcp.CRDT.ContextStore.decrement(s, :balance)
      {:ok, -1}
      iex> Vsmcp.CRDT.ContextStore.decrement(s, :balance, 4)
      {:ok, -5}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec decrement(crdt_id()) :: {:ok, term()} | {:error, term()}
  @spec decrement(store() | crdt_id(), crdt_id() | integer()) :: {:ok, term()} | {:error, term()}
  @spec decrement(store(), crdt_id(), integer()) :: {:ok, term()} | {:error, term()}
  def decrement(id), do: update(__MODULE__, id, {:decrement, 1})

  def decrement(store_or_id, id_or_amount) do
    if store?(store_or_id),
      do: update(store_or_id, id_or_amount, {:decrement, 1}),
      else: update(__MODULE__, store_or_id, {:decrement, id_or_amount})
  end

  def decrement(store, id, amount), do: update(store, id, {:decrement, amount})

  @doc """
  Add `element` to a set: `{:ok, set}` with the new `MapSet`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> Vsmcp.CRDT.ContextStore.add(s, :tags, "red")
      {:ok, MapSet.new(["red"])}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec add(store(), crdt_id(), term()) :: {:ok, term()} | {:error, term()}
  def add(store \\ __MODULE__, id, element), do: update(store, id, {:add, element})

  @doc """
  Remove `element` from a set: `{:ok, set}` with the new `MapSet`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :aw_set)
      iex> {:ok, _} = Vsmcp.CRDT.ContextStore.add(s, :tags, "red")
      iex> Vsmcp.CRDT.ContextStore.remove(s, :tags, "red")
      {:ok, MapSet.new([])}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec remove(store(), crdt_id(), term()) :: {:ok, term()} | {:error, term()}
  def remove(store \\ __MODULE__, id, element), do: update(store, id, {:remove, element})

  @doc """
  Set a register's value: `{:ok, value}`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :mode, :lww_register)
      iex> Vsmcp.CRDT.ContextStore.set(s, :mode, :safe)
      {:ok, :safe}
      iex> Vsmcp.CRDT.ContextStore.get(s, :mode)
      {:ok, :safe}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec set(store(), crdt_id(), term()) :: {:ok, term()} | {:error, term()}
  def set(store \\ __MODULE__, id, value), do: update(store, id, {:set, value})

  @doc """
  Whether `element` is in the set `id`: `{:ok, boolean}`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> {:ok, _} = Vsmcp.CRDT.ContextStore.add(s, :tags, 1)
      iex> {Vsmcp.CRDT.ContextStore.member?(s, :tags, 1), Vsmcp.CRDT.ContextStore.member?(s, :tags, 2)}
      {{:ok, true}, {:ok, false}}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec member?(store(), crdt_id(), term()) :: {:ok, boolean()} | {:error, term()}
  def member?(store \\ __MODULE__, id, element) do
    with {:ok, pid} <- whereis(store) do
      native(Native.store_member(pid, id, element))
      |> case do
        {:error, :unsupported_operation} -> unsupported(store, id, {:member?, element})
        other -> other
      end
    end
  end

  defp unsupported(store, id, op) do
    case get_metadata(store, id) do
      {:ok, %{type: type}} -> {:error, {:unsupported_operation, type, op}}
      error -> error
    end
  end

  @doc """
  All ids in the store.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :a, :g_counter)
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, {:b, 1}, :or_set)
      iex> Enum.sort(Vsmcp.CRDT.ContextStore.list_crdts(s))
      [:a, {:b, 1}]
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec list_crdts(store()) :: [crdt_id()] | {:error, term()}
  def list_crdts(store \\ __MODULE__) do
    with {:ok, pid} <- whereis(store),
         {:ok, ids} <- Native.store_ids(pid) do
      ids
    end
  end

  @doc """
  Metadata of `id`: `%{type:, created_by:, created_at:, updated_at:, tier:}`
  with times in ms since the epoch and `tier` one of `:hot`, `:warm`, `:cold`.
  Reading metadata does not promote the id.

  An id imported from the replaced application's DETS file (see
  `Vsmcp.CRDT.Storage.DetsImport`), and not deleted and created again
  since, also has `migrated_from:`: the path of the DETS file this store
  imported, or `:remote` when this store imported none (the id came from
  another node's import).

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> {:ok, meta} = Vsmcp.CRDT.ContextStore.get_metadata(s, :views)
      iex> {meta.type, meta.tier in [:hot, :warm, :cold]}
      {:g_counter, true}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec get_metadata(store(), crdt_id()) :: {:ok, map()} | {:error, term()}
  def get_metadata(store \\ __MODULE__, id) do
    with {:ok, pid} <- whereis(store), do: native(Native.store_metadata(pid, id))
  end

  @doc """
  Delete `id`: `:ok` or `{:error, :not_found}`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> Vsmcp.CRDT.ContextStore.delete(s, :views)
      :ok
      iex> Vsmcp.CRDT.ContextStore.delete(s, :views)
      {:error, :not_found}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec delete(store(), crdt_id()) :: :ok | {:error, term()}
  def delete(store \\ __MODULE__, id) do
    with {:ok, pid} <- whereis(store), do: native(Native.store_delete(pid, id))
  end

  @doc """
  Write everything pending to disk, ship local changes, then run an
  anti-entropy round with every peer that is up. `:ok` once each peer
  answered; after `timeout` ms (default 5_000) `{:error, {:timeout,
  peers}}` naming the peers (their node names) that did not. A store that
  does not sync only writes to disk.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> Vsmcp.CRDT.ContextStore.sync(s)
      :ok
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec sync(store(), timeout()) :: :ok | {:error, term()}
  def sync(store \\ __MODULE__, timeout \\ 5_000) do
    with {:ok, peer} <- peer(store), do: Peer.sync(peer, timeout)
  end

  @doc """
  Subscribe the calling process (or `pid`) to changes of `ids` (a list) or
  of every id (`:all`, the default). It then receives
  `{:crdt_changed, store_pid, id, :local | :remote}` for every change,
  local or merged from a peer (changes of one id within a few ms are
  coalesced into one message). See `Vsmcp.CRDT.Sync.Peer`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> :ok = Vsmcp.CRDT.ContextStore.subscribe(s, [:views])
      iex> {:ok, 1} = Vsmcp.CRDT.ContextStore.increment(s, :views)
      iex> receive do {:crdt_changed, ^s, :views, origin} -> origin after 2_000 -> :timeout end
      :local
      iex> Vsmcp.CRDT.ContextStore.unsubscribe(s)
      :ok
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec subscribe(store(), [crdt_id()] | :all, pid()) :: :ok | {:error, term()}
  def subscribe(store \\ __MODULE__, ids \\ :all, pid \\ self())
      when is_pid(pid) and (ids == :all or (is_list(ids) and length(ids) >= 0)) do
    with {:ok, peer} <- peer(store), do: Peer.subscribe(peer, pid, ids)
  end

  @doc """
  Undo `subscribe/3` for the calling process (or `pid`): once this
  returns, no notification is sent to it (those already in its mailbox
  stay there).

  A change made while nobody is subscribed to a local store is never
  reported (such a store records changes only while it has subscribers),
  so below the first message after subscribing again is about `:clicks`,
  not `:views`:

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :clicks, :g_counter)
      iex> :ok = Vsmcp.CRDT.ContextStore.subscribe(s, :all)
      iex> Vsmcp.CRDT.ContextStore.unsubscribe(s)
      :ok
      iex> {:ok, 1} = Vsmcp.CRDT.ContextStore.increment(s, :views)
      iex> :ok = Vsmcp.CRDT.ContextStore.subscribe(s, :all)
      iex> {:ok, 1} = Vsmcp.CRDT.ContextStore.increment(s, :clicks)
      iex> receive do {:crdt_changed, ^s, id, :local} -> id after 2_000 -> :timeout end
      :clicks
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec unsubscribe(store(), pid()) :: :ok | {:error, term()}
  def unsubscribe(store \\ __MODULE__, pid \\ self()) do
    with {:ok, peer} <- peer(store), do: Peer.unsubscribe(peer, pid)
  end

  @doc """
  Forget a replica that left the cluster for good (its `key` from
  `sync_info/1`'s `:peers`): it stops being waited for, and if it comes
  back it is refused (and counted) until it restarts on a fresh data
  directory. `key` may also be a member's `:key` from `sync_info/1`'s
  `:members` (for a member whose session is gone). Call it on every
  remaining node, including one restored from a backup; once all have
  forgotten it, a record only it created that this store lacks is treated
  as deleted if a copy of it ever arrives (see the sync guide, "A forgotten
  member"). `{:error, :invalid_replica}` for a string that is not a peer's
  key (or is our own), `{:error, :not_syncing}` on a store that does not
  sync, and `{:error, reason}` (`{:storage_error, detail}`, `:closed`) when
  the forgetting cannot be written: nothing is forgotten then; retry.

  Two stores of one node on one topic meet within a few milliseconds; once
  `a` has met `b`, `b` leaves for good and `a` forgets it:

      iex> alias Vsmcp.CRDT.ContextStore
      iex> tmp = fn -> Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}") end
      iex> sync = [topic: "doc:ContextStore.forget_replica"]
      iex> {:ok, a} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {:ok, b} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> key_b = ContextStore.sync_info(b).replica
      iex> met_b? = fn -> Enum.any?(ContextStore.sync_info(a).peers, &(&1.key == key_b)) end
      iex> Stream.interval(5) |> Stream.take(200) |> Enum.any?(fn _ -> met_b?.() end)
      true
      iex> :ok = ContextStore.stop(b)
      iex> ContextStore.forget_replica(a, key_b)
      :ok
      iex> ContextStore.sync_info(a).peers
      []
      iex> ContextStore.sync_info(a).forgetting
      []
      iex> ContextStore.forget_replica(a, "not a replica key")
      {:error, :invalid_replica}
      iex> ContextStore.stop(a)
      :ok
  """
  @spec forget_replica(store(), String.t()) :: :ok | {:error, term()}
  def forget_replica(store \\ __MODULE__, key) do
    with {:ok, peer} <- peer(store), do: Peer.forget_replica(peer, key)
  end

  @doc """
  Sync state: `:enabled`, `:topic`, `:transport`, `:replica` (this
  store's key), `:peers` (`%{key:, node:, up:, wire_version:}`),
  `:members` (`%{key:, directory:, up:, frontier:, stable:}`),
  `:forgetting` (forgotten replicas whose forgetting is not settled yet:
  `%{key:, held_by: [member key]}`, see the sync guide),
  `:counters` (messages, bytes, merges, retransmits), `:rejected` (refused
  peer input by kind), the outgoing log's `:log_entries` and
  `:log_bytes`, and `:digest_ready` (`true` once the anti-entropy
  digest holds every id: after a start it is built by a scan of the
  records on disk in steps of about 50 ms, so no call waits on it; a
  million ids take about 2.5 s, see `bench/RESULTS-host_app.md`).
  Deltas flow from the start; digest exchanges, and so `sync/2` rounds,
  wait until it is ready (the sync guide's "A restart").

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> Vsmcp.CRDT.ContextStore.sync_info(s).enabled
      false
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec sync_info(store()) :: map() | {:error, term()}
  def sync_info(store \\ __MODULE__) do
    with {:ok, peer} <- peer(store), do: Peer.info(peer)
  end

  defp peer(store) do
    with {:ok, pid} <- whereis(store), do: call_or_noproc(pid, :peer)
  end

  @doc """
  Store statistics: items per tier, pending writes, incarnation, HLC, path.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> match?(%{hot: 1, pending_writes: _, path: _}, Vsmcp.CRDT.ContextStore.stats(s))
      true
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec stats(store()) :: map() | {:error, term()}
  def stats(store \\ __MODULE__) do
    with {:ok, pid} <- whereis(store), do: Native.store_stats(pid)
  end

  @doc """
  Approximate bytes of memory the state of `id` holds in the hot or warm
  tier (0 when it is on disk only): `{:ok, bytes}`. For diagnostics and
  benchmarks.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> {:ok, bytes} = Vsmcp.CRDT.ContextStore.memory(s, :views)
      iex> is_integer(bytes) and bytes >= 0
      true
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec memory(store(), crdt_id()) :: {:ok, non_neg_integer()} | {:error, term()}
  def memory(store \\ __MODULE__, id) do
    with {:ok, pid} <- whereis(store), do: Native.store_heap_bytes(pid, id)
  end

  # ---------------------------------------------------------------------------
  # Operations: backup and restore, listing large stores, info

  @doc """
  Copy the store, online and consistently, into `dir`: a directory that
  must not exist yet (its parent must exist and be writable).

  Every write acknowledged before the call is in the copy: the pending
  relaxed writes are flushed first. RocksDB then makes a checkpoint (hard
  links to its immutable files plus its memtables flushed, so the copy
  costs little on the same filesystem and is copied across filesystems).
  Readers and writers go on meanwhile; writes acknowledged during the call
  may or may not be in the copy. Runs on a dirty IO scheduler.

  Returns `:ok`, `{:error, :already_exists}` when `dir` exists, or
  `{:error, {:storage_error, message}}` when it cannot be written (a
  missing or read-only parent, a full disk) or the pending writes cannot be
  flushed.

  ## Restore

  Start a store on the copy, or on a copy of it moved elsewhere:
  `start_link(storage_opts: [data_dir: dir])`. It holds the values,
  metadata (types, creators, times), delete tombstones and HLC of the
  original at the time of the backup.

  **The copy is a new replica.** The backup drops the random directory id
  (the replica identity used by sync) from the copy, so a store opened on
  it makes a fresh one at its first open. Original and copy can therefore
  run at once, even syncing on one topic: two live stores sharing an id
  would be one replica to sync, and their changes would collide. To
  replace a node whose disk was lost, start the restored copy and call
  `forget_replica/2` for the lost one on the survivors (their
  causal-stability collection waits for it otherwise). The copy's metadata
  keeps the original's directory id and the backup time under the key
  `backup_of`, for diagnostics.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :views, :g_counter)
      iex> {:ok, 2} = Vsmcp.CRDT.ContextStore.increment(s, :views, 2)
      iex> copy = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> Vsmcp.CRDT.ContextStore.backup(s, copy)
      :ok
      iex> Vsmcp.CRDT.ContextStore.backup(s, copy)
      {:error, :already_exists}
      iex> :ok = Vsmcp.CRDT.ContextStore.stop(s)
      iex> {:ok, restored} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: copy])
      iex> Vsmcp.CRDT.ContextStore.get(restored, :views)
      {:ok, 2}
      iex> Vsmcp.CRDT.ContextStore.stop(restored)
      :ok
  """
  @spec backup(store(), Path.t()) :: :ok | {:error, term()}
  def backup(store \\ __MODULE__, dir) do
    with {:ok, pid} <- whereis(store) do
      dir = Path.expand(dir)

      Telemetry.span([:vsmcp_crdt, :store, :backup], %{store: pid, dir: dir}, fn ->
        Native.store_backup(pid, dir)
      end)
    end
  end

  @doc """
  A lazy `Stream` of every id, for stores too large for `list_crdts/1`.

  Ids are fetched in pages of `page_size` (option, default 1_000, at most
  100_000), one NIF call per page on a dirty IO scheduler, so memory stays
  bounded by a page whatever the size of the store; nothing is fetched
  until the stream is enumerated. Each page lists the ids after the last
  one of the previous page, in the byte order of their canonical encoding
  (the order of `list_crdts/1`), with the writes not yet on disk laid over
  the disk.

  While writes happen: an id that exists for the whole enumeration is
  listed exactly once; an id created or deleted during it may or may not
  be; no id is ever listed twice. Ids that no longer decode are left out
  (as in `list_crdts/1`).

  The first argument may be the options, for the default store:
  `stream_crdts(page_size: 500)`. Enumerating exits with
  `{reason, {Vsmcp.CRDT.ContextStore, :stream_crdts, [store, opts]}}` if
  the store is not running (`:noproc`) or fails (`{:storage_error, msg}`).

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> for i <- 1..5, do: :ok = Vsmcp.CRDT.ContextStore.create(s, i, :g_counter)
      iex> s |> Vsmcp.CRDT.ContextStore.stream_crdts(page_size: 2) |> Enum.sort()
      [1, 2, 3, 4, 5]
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec stream_crdts(store() | keyword(), keyword()) :: Enumerable.t()
  def stream_crdts(store_or_opts \\ __MODULE__, opts \\ [])

  def stream_crdts(opts, []) when is_list(opts), do: stream_crdts(__MODULE__, opts)

  def stream_crdts(store, opts) when is_list(opts) do
    page_size = Keyword.get(opts, :page_size, 1_000)

    unless is_integer(page_size) and page_size in 1..100_000 do
      raise ArgumentError,
            "page_size must be an integer in 1..100_000, got: #{inspect(page_size)}"
    end

    fail = fn reason -> exit({reason, {__MODULE__, :stream_crdts, [store, opts]}}) end

    Stream.resource(
      fn ->
        case whereis(store) do
          {:ok, pid} -> {pid, nil}
          {:error, reason} -> fail.(reason)
        end
      end,
      fn
        :done ->
          {:halt, :done}

        {pid, cursor} ->
          case Native.store_ids_page(pid, cursor, page_size) do
            {:ok, ids, nil} -> {ids, :done}
            {:ok, ids, next} -> {ids, {pid, next}}
            {:error, reason} -> fail.(reason)
          end
      end,
      fn _ -> :ok end
    )
  end

  @doc """
  A report on the store, in the spirit of Redis `INFO`: a map holding
  every key of `stats/1` plus the sections below. Counts, bytes and rates
  are non-negative integers (rates: floats). Collecting it costs
  O(items in memory + pending writes) and at most about 10,000 records read
  from disk, on a dirty IO scheduler; meant for monitoring every few
  seconds, not for every request.

  Keys of `stats/1`: `:hot`, `:warm` (items per tier), `:cold_estimate`
  (RocksDB's estimate of stored records), `:pending_writes`, `:shards`,
  `:incarnation`, `:node_id`, `:hlc`, `:durability`, `:path`, `:closed`,
  `:write_error`.

  * `:uptime_ms` - since the store opened.
  * `:crdts` - ids per type and tier, and `:tombstones`, the delete
    tombstones held (a store that syncs keeps one per deleted id until
    causal-stability collection drops it). `:count` and `:by_type` (a map with
    every type: `:g_counter`, `:pn_counter`, `:or_set`, `:aw_set`,
    `:lww_register`) over all tiers; `:hot` and `:warm`, each
    `%{count:, by_type:}`, exact; `:cold` (on disk only),
    `%{count:, by_type:, exact:, sampled:}`: counted record by record when
    at most 10,000 records are stored (`exact: true`), else **estimated**
    (`exact: false`): the share of each type among `sampled` records read
    at random points of the key range, applied to RocksDB's key estimate
    (which counts not yet compacted updates of an id too, so it over-counts
    until compaction).
  * `:memory` - bytes: `:hot_bytes` (approximate heap of the decoded
    states, `memory/2` summed), `:warm_bytes` (encoded states),
    `:pending_bytes` (estimated encoded size of the writes not yet on disk),
    and RocksDB's `:memtable_bytes` (`rocksdb.cur-size-all-mem-tables`),
    `:block_cache_bytes` (`rocksdb.block-cache-usage`) and
    `:table_readers_bytes` (`rocksdb.estimate-table-readers-mem`); and the
    native library's Rust heap, shared by every store of the VM:
    `:nif_heap_live_bytes` (allocations not yet freed: a figure that grows
    without bound is a leak) and `:nif_heap_resident_bytes` (what its
    allocator, jemalloc, holds resident: live allocations rounded up to
    size classes, per-thread caches, freed pages not yet given back and its
    metadata; see the operations guide).
  * `:disk` - bytes on disk: `:sst_bytes` (`rocksdb.total-sst-files-size`,
    files not yet deleted included), `:live_sst_bytes`
    (`rocksdb.live-sst-files-size`), `:live_data_bytes`
    (`rocksdb.estimate-live-data-size`), `:wal_bytes` and `:wal_files` (the
    write-ahead log's `*.log` files: RocksDB has no property for them),
    `:keys_estimate` (`rocksdb.estimate-num-keys` of the records).
  * `:compaction` - `:running` (`rocksdb.num-running-compactions`),
    `:pending` (boolean, `rocksdb.compaction-pending`), `:pending_bytes`
    (`rocksdb.estimate-pending-compaction-bytes`), `:running_flushes`,
    `:flush_pending` (boolean), `:write_stopped` (boolean: RocksDB stalls
    writes), `:background_errors` (since open).
  * `:ops` - operations since the store opened: `:reads` (value reads:
    `get`, `member?`), `:writes` (local `create`, `update` and its
    shorthands, `delete`), `:remote_merges` (entries merged from peers),
    and `:reads_per_sec`, `:writes_per_sec`, `:remote_merges_per_sec` over
    the last window of `:window_ms`: the store's flush thread closes a
    window about every second, so every caller of `info/1` reads the same
    rates (the first window starts when the store opened; with a
    `flush_interval` over a second, a call finding the window open for two
    seconds closes it).
  * `:lag` - durability lag: `:pending_writes` (ids with acknowledged
    writes not yet in RocksDB's log), `:pending_bytes`,
    `:oldest_pending_ms` (age of the oldest such write; `nil` when none:
    always with `durability: :strict`), `:flush_interval_ms` (the
    group-commit period it should stay near).
  * `:clock` - `:hlc` (`{wall_ms, counter}`, the last timestamp issued),
    `:max_remote_ahead_ms` (the largest difference between a peer's clock
    and ours seen in a sync message, refused ones included; negative when
    peers are behind; `nil` before any), `:max_clock_offset_ms` (the
    largest one accepted).
  * `:sync` - the map of `sync_info/1`.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> %{crdts: %{count: count}, ops: %{writes: writes}} = Vsmcp.CRDT.ContextStore.info(s)
      iex> {count, writes}
      {1, 1}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """
  @spec info(store()) :: map() | {:error, term()}
  def info(store \\ __MODULE__) do
    with {:ok, pid} <- whereis(store),
         stats when is_map(stats) <- Native.store_stats(pid),
         {:ok, report} <- Native.store_info(pid) do
      sync =
        case sync_info(pid) do
          sync when is_map(sync) -> sync
          {:error, _} -> %{enabled: false}
        end

      stats |> Map.merge(report) |> Map.put(:sync, sync)
    end
  end

  @doc false
  # Run one decay pass now (tests and benchmarks).
  def decay_now(store \\ __MODULE__) do
    with {:ok, pid} <- whereis(store), do: Native.store_decay(pid)
  end

  @doc false
  # Fault injection for tests: make durable writes fail like a full disk.
  def inject_write_failure(store, on?) do
    with {:ok, pid} <- whereis(store),
         {:ok, handle} <- call_or_noproc(pid, :handle),
         do: Native.store_fail_writes(handle, on?)
  end

  @doc false
  # Fault injection for tests: skew the wall clock of every store of this
  # OS process (this node) by `ms` (negative: behind; 0: fixed). Only the
  # test build (cargo feature `fault-injection`) has it.
  def inject_clock_skew(ms) when is_integer(ms), do: Native.store_skew_clock(ms)

  defp call_or_noproc(pid, msg) do
    GenServer.call(pid, msg)
  catch
    :exit, _ -> {:error, :noproc}
  end
end
