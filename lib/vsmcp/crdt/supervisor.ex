defmodule Vsmcp.CRDT.Supervisor do
  @moduledoc """
  Supervises the application's default store, registered as
  `Vsmcp.CRDT.ContextStore`, so that `ContextStore.get(:id)` and friends work
  without a store argument.

  Options come from the application environment, under `:vsmcp` (the
  application this library replaces) or `:vsmcp_crdt`, the latter winning:

      config :vsmcp, Vsmcp.CRDT.ContextStore,
        node_id: :custom_node_name,
        storage_opts: [memory_limit: 5000, ets_limit: 50_000,
                       access_threshold: 5, decay_interval: 120_000]

  Options given to `start_link/1` win over both. Without a location the data
  lives at `data/crdt_storage.dets` (a marker file, see
  `Vsmcp.CRDT.Storage.Location`), relative to the working directory; missing
  directories are created, so a fresh application starts with no
  preparation.

  Stores started elsewhere with `Vsmcp.CRDT.ContextStore.start_link/1` and no
  `:name` coexist with the default store.

  The default store syncs with the default stores of the other nodes
  (`sync_opts: [enabled: true]`, topic `"vsmcp_crdt:Vsmcp.CRDT.ContextStore"`),
  over `Vsmcp.PubSub` when the host runs it, else over `:pg`; configure
  it with `sync_opts:` in the same place, e.g. `sync_opts: [enabled: false]`.

  Cost: one supervisor and one store process (plus the store's sync peer);
  reading the application environment once per start. Invariant: at most
  one default store per node, registered as `Vsmcp.CRDT.ContextStore`
  (`:one_for_one`, so a crashed store restarts from its data on disk).
  """

  use Supervisor

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.ContextStore.Options

  @default_storage [dets_file: "data/crdt_storage.dets"]

  @doc """
  Start the supervisor and the default store. Options are those of
  `Vsmcp.CRDT.ContextStore.start_link/1`, plus `:supervisor_name`; see
  `store_options/1` for how they combine with the application
  environment.

  The default store is then reached without a store argument (here kept
  local with `enabled: false`, and removed at the end):

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, sup} = Vsmcp.CRDT.Supervisor.start_link(storage_opts: [data_dir: dir], sync_opts: [enabled: false])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(:page_views, :g_counter)
      iex> Vsmcp.CRDT.ContextStore.increment(:page_views, 5)
      {:ok, 5}
      iex> Supervisor.stop(sup)
      :ok
      iex> Vsmcp.CRDT.ContextStore.get(:page_views)
      {:error, :noproc}
      iex> {:ok, _} = File.rm_rf(dir)
  """
  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts \\ []) do
    Supervisor.start_link(__MODULE__, Options.hide_secret(opts),
      name: Keyword.get(opts, :supervisor_name, __MODULE__)
    )
  end

  @impl true
  def init(opts) do
    opts = opts |> store_options() |> Options.hide_secret()
    Supervisor.init([{ContextStore, opts}], strategy: :one_for_one)
  end

  @doc """
  The options the default store is started with: the application
  environment, merged with `opts`.

      iex> opts = Vsmcp.CRDT.Supervisor.store_options(node_id: :n1, storage_opts: [data_dir: "/tmp/x"])
      iex> {opts[:name], opts[:node_id], opts[:storage_opts][:data_dir], opts[:sync_opts][:enabled]}
      {Vsmcp.CRDT.ContextStore, :n1, "/tmp/x", true}
  """
  @spec store_options(keyword()) :: keyword()
  def store_options(opts \\ []) do
    env =
      Keyword.merge(
        Application.get_env(:vsmcp, ContextStore, []),
        Application.get_env(:vsmcp_crdt, ContextStore, [])
      )

    merged = env |> Keyword.merge(Keyword.delete(opts, :supervisor_name))

    storage =
      Keyword.get(env, :storage_opts, []) |> Keyword.merge(Keyword.get(opts, :storage_opts, []))

    storage =
      if Keyword.has_key?(storage, :data_dir) or Keyword.has_key?(storage, :dets_file),
        do: storage,
        else: Keyword.merge(@default_storage, storage)

    # The default store syncs (on a topic derived from its name) unless
    # told otherwise.
    sync =
      [enabled: true]
      |> Keyword.merge(Keyword.get(env, :sync_opts, []))
      |> Keyword.merge(Keyword.get(opts, :sync_opts, []))

    merged
    |> Keyword.put(:storage_opts, storage)
    |> Keyword.put(:sync_opts, sync)
    |> Keyword.put_new(:node_id, node())
    |> Keyword.put(:name, ContextStore)
  end
end
