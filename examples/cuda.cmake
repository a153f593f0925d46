# The CUDA example (included by examples/CMakeLists.txt).
if(SKV_HAS_CUDA)
  add_executable(cuda_decode ${CMAKE_CURRENT_SOURCE_DIR}/cuda_decode.cu)
  target_link_libraries(cuda_decode PRIVATE skv::cuda)
  if(SKV_BUILD_TESTS)
    # Exits 0 with a message where no GPU is usable.
    add_test(NAME example.cuda_decode COMMAND cuda_decode)
    set_tests_properties(example.cuda_decode PROPERTIES LABELS "example;gpu")
  endif()
endif()
