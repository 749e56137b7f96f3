defmodule Vsmcp.CRDT.Native do
  @moduledoc """
  Stubs for the Rust NIF library `native/vsmcp_crdt_nif`.

  Every function here is replaced by the Rust NIF when this module is loaded
  (`@on_load`). The Elixir bodies only run if the library failed to load, and
  then raise `:nif_not_loaded`.

  This module is internal glue: it does no argument checking and has no
  stable API. Call the documented modules in `lib/vsmcp/crdt/` instead.

  The library is built by the `:vsmcp_crdt_nif` Mix compiler (defined in
  `mix.exs`) and installed as `priv/native/libvsmcp_crdt_nif.so`.

  Cost: each function is one NIF call; the `_dirty` variants run on a
  dirty scheduler, the others must return within about a millisecond (see
  `Vsmcp.CRDT.Types.EncodedState` and `Vsmcp.CRDT.ContextStore`).
  Invariant: the module loads only if `:erlang.load_nif/2` succeeds
  (`@on_load`), so in a running system every function here is the Rust
  one.
  """

  @on_load :load_nif

  @doc false
  def load_nif do
    :erlang.load_nif(String.to_charlist(library_path()), 0)
  end

  # erlang:load_nif/2 wants the path without the ".so" extension.
  defp library_path do
    priv =
      case :code.priv_dir(:vsmcp_crdt) do
        {:error, _} -> priv_dir_next_to_beam()
        dir -> List.to_string(dir)
      end

    Path.join([priv, "native", "libvsmcp_crdt_nif"])
  end

  # Without the application on the code path (e.g. the beam was loaded by
  # hand), fall back to <app>/priv next to <app>/ebin.
  defp priv_dir_next_to_beam do
    case :code.which(__MODULE__) do
      beam when is_list(beam) ->
        beam |> List.to_string() |> Path.dirname() |> Path.join("../priv") |> Path.expand()

      _ ->
        Path.expand("../../../priv", __DIR__)
    end
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
  def store_get(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_get_dirty(_h, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_member(_h, _id, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_member_dirty(_h, _id, _elem), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_update(_h, _id, _op, _want_value), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def store_update_dirty(_h, _id, _op, _want_value), do: :erlang.nif_error(:nif_not_loaded)
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
