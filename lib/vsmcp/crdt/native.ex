defmodule Vsmcp.CRDT.Native do
  # Internal: hidden from the documentation.
  #
  # Stubs for the Rust NIF library `native/vsmcp_crdt_nif`.
  #
  # Every function here is replaced by the Rust NIF when this module is loaded
  # (`@on_load`). The Elixir bodies only run if the library failed to load, and
  # then raise `:nif_not_loaded`.
  #
  # This module is internal glue: it does no argument checking and has no
  # stable API. Call the documented modules in `lib/vsmcp/crdt/` instead.
  #
  # ## Where the library comes from
  #
  # Through `RustlerPrecompiled`, when this module compiles:
  #
  #   * **Precompiled** (the default): the library for this OS, CPU and NIF
  #     version is downloaded from the release
  #     (`<source_url>/releases/download/v<version>`, or
  #     `$VSMCP_CRDT_NIF_BASE_URL`), checked against the SHA-256 in
  #     `checksum-Elixir.Vsmcp.CRDT.Native.exs` and loaded from
  #     `priv/native/`. No Rust toolchain is needed.
  #   * **Built locally** when `VSMCP_CRDT_BUILD=1` (or `true`) is set, or
  #     `config :rustler_precompiled, :force_build, vsmcp_crdt: true`, and
  #     always in `MIX_ENV=test`: `use Rustler` runs `cargo rustc --release`
  #     in `native/vsmcp_crdt_nif` and installs
  #     `priv/native/libvsmcp_crdt_nif.so`. The test build enables the cargo
  #     feature `fault-injection` (the test suite fails writes on purpose with
  #     it); any other build never has it. Cargo's target directory is
  #     `$CARGO_TARGET_DIR`, or `~/.cache/vsmcp_crdt/target`, so the bundled
  #     RocksDB is compiled once per machine, not once per checkout or
  #     dependent project.
  #   * `MIX_ENV=docs` (`mix docs`) neither builds nor loads it.
  #
  # Cost: each function is one NIF call; the `_dirty` variants run on a
  # dirty scheduler, the others must return within about a millisecond (see
  # `Vsmcp.CRDT.Types.EncodedState` and `Vsmcp.CRDT.ContextStore`).
  # Invariant: the module loads only if `:erlang.load_nif/2` succeeds
  # (`@on_load`), so in a running system every function here is the Rust
  # one.
  @moduledoc false

  @force_build? System.get_env("VSMCP_CRDT_BUILD") in ["1", "true"] or Mix.env() == :test

  if Mix.env() != :docs do
    version = Mix.Project.config()[:version]

    # The NIF crate is built against one NIF version, named by its rustler
    # feature `nif_version_X_Y`; an older NIF version loads in every newer
    # OTP (2.16: OTP 24 and later). Read from the crate's Cargo.toml so the
    # two never disagree (bin/release-nif reads it the same way).
    nif_crate_toml = Path.expand("../../../native/vsmcp_crdt_nif/Cargo.toml", __DIR__)
    @external_resource nif_crate_toml
    [_, major, minor] = Regex.run(~r/"nif_version_(\d+)_(\d+)"/, File.read!(nif_crate_toml))

    # Without CARGO_TARGET_DIR a forced build goes to a per-user cache shared
    # by every checkout and every project depending on this one.
    cargo_target_dir =
      case System.get_env("CARGO_TARGET_DIR") do
        dir when dir in [nil, ""] ->
          Path.join([System.user_home() || File.cwd!(), ".cache/vsmcp_crdt/target"])

        dir ->
          Path.expand(dir)
      end

    use RustlerPrecompiled,
      otp_app: :vsmcp_crdt,
      crate: "vsmcp_crdt_nif",
      version: version,
      base_url:
        System.get_env(
          "VSMCP_CRDT_NIF_BASE_URL",
          "#{Mix.Project.config()[:source_url]}/releases/download/v#{version}"
        ),
      # What a release publishes (bin/release-nif builds one target; see
      # guides/operations.md, "Releasing the NIF").
      targets: ~w(
        aarch64-apple-darwin
        aarch64-unknown-linux-gnu
        aarch64-unknown-linux-musl
        x86_64-apple-darwin
        x86_64-unknown-linux-gnu
        x86_64-unknown-linux-musl
      ),
      nif_versions: ["#{major}.#{minor}"],
      force_build: @force_build?,
      # The options below are Rustler's, used by a forced build only. One
      # cargo profile everywhere (see Cargo.toml): release.
      mode: :release,
      features: if(Mix.env() == :test, do: ["fault-injection"], else: []),
      target_dir: cargo_target_dir
  end

  if @force_build? do
    # A forced build rebuilds on every compile (cargo is incremental: about a
    # second when nothing changed). priv/native/ is shared by every Mix
    # environment of a checkout and by the projects depending on it by
    # `path:`, so the library left there may be another environment's build
    # (only the test build has fault injection); this puts back the one this
    # environment needs.
    @doc false
    def __mix_recompile__?, do: true
  end

  @doc """
  Returns `true` when the Rust library is loaded (the module does not load
  otherwise, so a running system always answers `true`).

      iex> Vsmcp.CRDT.Native.nif_loaded()
      true
  """
  @spec nif_loaded() :: boolean()
  def nif_loaded, do: :erlang.nif_error(:nif_not_loaded)

  # ---------------------------------------------------------------------------
  # types: the pure CRDT and clock functions (native/vsmcp_crdt_nif/src/types.rs)
  # behind Vsmcp.CRDT.Types.* and Vsmcp.CRDT.HLC. `kinds` is the list of kind
  # atoms the caller accepts; each `_dirty` twin runs on a dirty CPU scheduler.
  # ---------------------------------------------------------------------------

  @doc false
  def crdt_new(_kind), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_mutate(_kinds, _state, _node_id, _op), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_mutate_dirty(_kinds, _state, _node_id, _op), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_merge(_kinds, _a, _b), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_merge_dirty(_kinds, _a, _b), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_value(_kinds, _state), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_value_dirty(_kinds, _state), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_member(_kinds, _state, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_member_dirty(_kinds, _state, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_equal(_kinds, _a, _b), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_equal_dirty(_kinds, _a, _b), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_causal_context(_kinds, _state), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def crdt_causal_context_dirty(_kinds, _state), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def hlc_tick(_wall_ms, _counter, _now_ms), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def hlc_receive(_l_wall, _l_counter, _r_wall, _r_counter, _now_ms, _max_offset_ms),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def hlc_compare(_l_wall, _l_counter, _l_node, _r_wall, _r_counter, _r_node),
    do: :erlang.nif_error(:nif_not_loaded)

  # --- end of types -----------------------------------------------------------

  # ---------------------------------------------------------------------------
  # store: Vsmcp.CRDT.ContextStore (native/vsmcp_crdt_nif/src/store.rs). Each
  # `_dirty` twin runs on a dirty IO scheduler; the plain function answers
  # `:dirty` when the disk is needed.
  # ---------------------------------------------------------------------------

  @doc false
  def store_open(_config), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_register(_h, _pid), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_registered(_pid), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_path_open(_path), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_close(_h, _deadline_ms), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_create(_h, _id, _type), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_create_dirty(_h, _id, _type), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_get(_h, _id, _reply_to), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_get_dirty(_h, _id, _reply_to), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_member(_h, _id, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_member_dirty(_h, _id, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_update(_h, _id, _op, _reply), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_update_dirty(_h, _id, _op, _reply), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_metadata(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_metadata_dirty(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_delete(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_delete_dirty(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_ids(_h), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_flush(_h), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_decay(_h), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_stats(_h), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_fail_writes(_h, _on), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_skew_clock(_ms), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_probe_take, do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_heap_bytes(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_remove_tokens(_h, _id), do: :erlang.nif_error(:nif_not_loaded)

  # Sync (Vsmcp.CRDT.Sync.Peer)
  @doc false
  def sync_start(_store, _opts), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_stop(_sync), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_tick(_sync, _now_ms, _want_changes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_hello(_sync, _want_changes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_receive(_sync, _bytes, _now_ms, _want_changes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_round(_sync, _now_ms, _want_changes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_forget(_sync, _key), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def sync_info(_sync), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_value_cache(_h, _id), do: :erlang.nif_error(:nif_not_loaded)

  # Import of the replaced application's DETS entries
  # (native/vsmcp_crdt_nif/src/import.rs; Vsmcp.CRDT.Storage.DetsImport).
  # Dirty IO: one call per batch.
  @doc false
  def store_import(_h, _entries), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_finish_import(_h, _source), do: :erlang.nif_error(:nif_not_loaded)

  # --- end of store -----------------------------------------------------------

  # ---------------------------------------------------------------------------
  # operations: backup, listing by pages and info of a store
  # (native/vsmcp_crdt_nif/src/operations.rs), all on dirty IO schedulers.
  # ---------------------------------------------------------------------------

  @doc false
  def store_backup(_h, _path), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_ids_page(_h, _after, _limit), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_info(_h), do: :erlang.nif_error(:nif_not_loaded)

  # --- end of operations ------------------------------------------------------
end
