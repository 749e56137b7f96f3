defmodule Mix.Tasks.Compile.VsmcpCrdtNifTest do
  @moduledoc """
  Where the `:vsmcp_crdt_nif` compiler step lives: in its own file outside
  `lib/`, which `mix.exs` loads before the project compiles (so it also
  exists when this project is a dependency; `host_project_test.exs` builds
  such a host project).
  """
  use ExUnit.Case, async: true

  @repo_dir Path.expand("../../..", __DIR__)
  @task_file Path.join(@repo_dir, "mix/tasks/compile.vsmcp_crdt_nif.ex")

  test "the compiler task is defined by its own file, loaded by mix.exs" do
    assert File.regular?(@task_file)
    assert Code.ensure_loaded?(Mix.Tasks.Compile.VsmcpCrdtNif)

    source = Mix.Tasks.Compile.VsmcpCrdtNif.__info__(:compile)[:source]
    assert Path.expand(to_string(source)) == @task_file

    # mix.exs holds the project only.
    mix_exs = File.read!(Path.join(@repo_dir, "mix.exs"))
    refute mix_exs =~ "defmodule Mix.Tasks."
    assert mix_exs =~ ~s|Code.require_file("mix/tasks/compile.vsmcp_crdt_nif.ex", __DIR__)|
  end

  test "it is a Mix compiler named :vsmcp_crdt_nif in the project's compilers" do
    assert Mix.Task.get("compile.vsmcp_crdt_nif") == Mix.Tasks.Compile.VsmcpCrdtNif
    assert :vsmcp_crdt_nif in Mix.Project.config()[:compilers]
  end
end
