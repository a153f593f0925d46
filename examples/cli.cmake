# The `skv` command line (examples/cli/): needs CLI11 and nlohmann-json (both found, quietly, by the
# top-level CMakeLists.txt).
# The target is skv_cli (the name skv is the header-only library); the program it builds is `skv`.
if(CLI11_FOUND AND nlohmann_json_FOUND)
  add_executable(skv_cli cli/main.cpp cli/eval_options.cpp)
  set_target_properties(skv_cli PROPERTIES OUTPUT_NAME skv)
  target_link_libraries(skv_cli PRIVATE skv::skv nlohmann_json::nlohmann_json CLI11::CLI11)
  target_compile_options(skv_cli PRIVATE ${SKV_WARNINGS} ${SKV_TEST_OPTIMIZATION})
  if(OpenMP_CXX_FOUND)
    target_link_libraries(skv_cli PRIVATE OpenMP::OpenMP_CXX)
  endif()
else()
  message(STATUS "skv: the skv command line needs CLI11 and nlohmann-json (apt-get install libcli11-dev nlohmann-json3-dev); skipped")
endif()
